"""The `lab` command: its arguments (lab.commands does the work). Bad input gets one clear line and
exit 2; a failed run exits 1."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeAlias

from lab import commands, logs
from lab.errors import LabError, printable
from lab.fleet.host_vm import HOST_MEMORY_MIB
from lab.nightly import add_commands as add_nightly_commands


def _count(most: int) -> Callable[[str], int]:
    """A whole number from 1 to `most`, in ASCII digits (`isdigit` alone takes "²", which int() does not)."""

    def parse(value: str) -> int:
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= most:
            raise argparse.ArgumentTypeError(f"wants a whole number from 1 to {most}, got {value!r}")
        return int(value)

    return parse


def _engine_options(command: argparse.ArgumentParser, slurm: str) -> None:
    command.add_argument("--engine", choices=["local", "slurm"], default="local",
                         help=f"local: on this machine (default); slurm: {slurm}")
    command.add_argument("--partition", help="with --engine slurm: this partition for every cell, instead of "
                         "each host class's own")


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line too, like every other usage error; `--help` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


Groups: TypeAlias = "argparse._SubParsersAction[_Parser]"


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="lab", description="The hibernation lab.")
    top.add_argument("-v", "--verbose", action="count", default=0,
                     help="debug traces of QEMU's launch and shutdown and of the lab's connections (-vv: also "
                          "qemu.qmp's and paramiko's own logs)")
    groups = top.add_subparsers(dest="command", required=True)
    for add in (_image_commands, _disk_commands, _scenario_commands, _matrix_commands, _qemu_commands,
                _host_commands, add_nightly_commands):
        add(groups)
    groups.add_parser("doctor", help="what this host can run, and what to install").set_defaults(
        handler=commands.doctor)
    return top


def _image_commands(groups: Groups) -> None:
    images = groups.add_parser("images", help="build and list guest images")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build the default (or named) guest image")
    build.add_argument("name", nargs="?", help="image recipe name (default: debian-ARCH)")
    build.add_argument("--arch", default="arm64", choices=["arm64", "amd64"])
    build.add_argument("--refresh", action="store_true", help="fetch the package lists and resolve the recipe again "
                       "(otherwise the recorded resolution is used until LAB_RESOLUTION_MAX_AGE, default 7d)")
    build.add_argument("--kernel-deb", metavar="linux-image-…=VERSION", help="build with this Debian kernel")
    build.set_defaults(handler=commands.images_build)
    images_sub.add_parser("list", help="show cached images").set_defaults(handler=commands.images_list)


def _disk_commands(groups: Groups) -> None:
    disk = groups.add_parser("disk", help="inspect or alter a swap disk's hibernation header")
    disk_sub = disk.add_subparsers(dest="disk_command", required=True)
    inspect = disk_sub.add_parser("inspect", help="show the swap area's hibernation header")
    inspect.add_argument("disk")
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--force", action="store_true", help="read a block or character device too")
    inspect.set_defaults(handler=commands.disk_inspect)
    signature = disk_sub.add_parser("set-signature", help="set HW_SIG and hw_sig in the header")
    signature.add_argument("disk")
    signature.add_argument("value", help="decimal or 0x-hex, 1..0xffffffff")
    signature.add_argument("--force", action="store_true", help="write to a block or character device too")
    signature.set_defaults(handler=commands.disk_set_signature)


def _scenario_commands(groups: Groups) -> None:
    scenarios = groups.add_parser("scenarios", help="the shipped scenarios: list them, show one")
    scenarios_sub = scenarios.add_subparsers(dest="scenarios_command", required=True)
    scenarios_sub.add_parser("list", help="every shipped scenario and what it checks").set_defaults(
        handler=commands.scenarios_list)
    show = scenarios_sub.add_parser("show", help="print a scenario file")
    show.add_argument("name", help="scenario name or file")
    show.set_defaults(handler=commands.scenarios_show)
    scenario = groups.add_parser("scenario", help="run a scenario")
    scenario.add_argument("name", help="scenario name (see `lab scenarios list`) or file")
    scenario.add_argument("--arch", default="arm64")
    scenario.add_argument("--image", help="image recipe name or built image directory")
    scenario.add_argument("--accel", choices=["kvm", "tcg"], help="force an accelerator")
    scenario.add_argument("--qemu", metavar="BUILD", help="QEMU build: debian (default), patched (from `lab qemu "
                          "build`), or the path of a qemu-system binary")
    scenario.add_argument("--psci", help="PSCI personality for the TCG layer (overrides the scenario); "
                          "`qemu`: no layer, QEMU's own PSCI answers")
    scenario.add_argument("--off2-contract", metavar="CONTRACT",
                          help="how this QEMU reports SYSTEM_OFF2 over QMP: none, unsupported, suspend-disk, "
                               "event:NAME, shutdown-reason:REASON (default: asked of the QEMU build itself)")
    scenario.add_argument("--runs-dir", default="runs", help="where run directories go (default: ./runs)")
    scenario.add_argument("--bisect-exit", action="store_true",
                          help="exit as `git bisect run` wants: 0 PASS, 1 FAIL (the guest's behaviour), 125 ERROR or "
                               "set-up error (the lab's: skip this revision), 128 usage error (stop the bisection)")
    scenario.add_argument("--catalogue", metavar="FILE",
                          help="your own kernel log catalogue (YAML: label, pattern, severity, advice), "
                               "matched after the shipped one")
    scenario.add_argument("--host", metavar="ssh://USER@HOST:PORT",
                          help="run QEMU on a lab host over SSH (its key pinned: see `lab host list`)")
    _engine_options(scenario, "run on a node of the scenario's host class with srun, output live (docs/slurm.md)")
    _own_guest_options(scenario)
    scenario.add_argument("--triage", action="store_true",
                          help="when the run fails, walk the pm_test ladder and try test_resume (as `lab triage`)")
    scenario.set_defaults(handler=commands.scenario)
    triage = groups.add_parser("triage", help="re-run a failed run's hibernation at each pm_test level and in "
                                              "the test_resume disk mode; writes triage.json beside the run")
    triage.add_argument("run_dir", metavar="RUN_DIR")
    triage.add_argument("--catalogue", metavar="FILE", help="your own kernel log catalogue, as for `lab scenario`")
    triage.set_defaults(handler=commands.triage)


def _own_guest_options(scenario: argparse.ArgumentParser) -> None:
    guest = scenario.add_argument_group("bring your own guest")
    guest.add_argument("--kernel", help="a kernel Image file, or a Debian kernel .deb holding kernel and modules")
    guest.add_argument("--kernel-deb", metavar="linux-image-…=VERSION",
                       help="a Debian kernel by version (unstable, testing, trixie or bookworm), with its modules")
    guest.add_argument("--initrd", help="an initramfs to boot instead of the image's")
    guest.add_argument("--append", help="extra kernel command-line arguments")
    guest.add_argument("--disk", help="a swap disk (raw or qcow2) to copy and use instead of a blank one")
    guest.add_argument("--force-device", action="store_true",
                       help="let --disk be a block or character device (copied whole into the run)")
    guest.add_argument("--system-map", help="the kernel's System.map, for a kernel whose kallsyms the lab cannot read")


def _matrix_commands(groups: Groups) -> None:
    run = groups.add_parser("run", help="run a matrix: scenarios on kernels, PSCI personalities, accelerators")
    run.add_argument("--matrix", required=True, metavar="FILE", help="the matrix file (YAML, see matrices/)")
    run.add_argument("--workers", type=_count(64), metavar="N", help="runs at a time (default: the file's, else 1)")
    run.add_argument("--runs-dir", default="runs", help="where the matrix directory goes (default: ./runs)")
    run.add_argument("--retries", type=_count(10), default=0, metavar="N",
                     help="run a failing cell up to N more times; one that then passes is flaky (default: 0)")
    _engine_options(run, "submit the cells as Slurm array jobs, one per host class; --workers per class "
                         "(docs/slurm.md)")
    run.set_defaults(handler=commands.run)
    cell = groups.add_parser("cell", help="run one matrix cell from its JSON spec: what an engine starts on a node")
    cell.add_argument("spec", help="the cell spec (JSON), as a Slurm job script gives it")
    cell.set_defaults(handler=commands.cell)


def _qemu_commands(groups: Groups) -> None:
    qemu = groups.add_parser("qemu", help="the lab's own QEMU that reports SYSTEM_OFF2: build it, list builds")
    qemu_sub = qemu.add_subparsers(dest="qemu_command", required=True)
    qemu_build = qemu_sub.add_parser("build", help="build QEMU from Debian's source with the lab's SYSTEM_OFF2 "
                                                   "series (cached; prints the binary's path last)")
    qemu_build.add_argument("--target", default="native", choices=["native", "arm64"],
                            help="native: runs here; arm64: cross-built for an arm64 KVM host")
    qemu_build.add_argument("--source-version", default=None, metavar="VERSION",
                            help="Debian's qemu source version (default: the newest one in qemu/sources.yaml that "
                                 "Debian serves)")
    qemu_build.add_argument("--jobs", type=_count(256), metavar="N", help="parallel compile jobs (default: all cores)")
    qemu_build.set_defaults(handler=commands.qemu_build)
    qemu_sub.add_parser("test", help="run the series' own tests through QEMU's runners (tests/tcg, meson test) on "
                        "the newest native build").set_defaults(handler=commands.qemu_test)
    qemu_sub.add_parser("list", help="the QEMU builds the lab knows and what each reports").set_defaults(
        handler=commands.qemu_list)


def _host_commands(groups: Groups) -> None:
    host = groups.add_parser("host", help="lab hosts: an emulated arm64 KVM host that runs guests' QEMU over SSH")
    host_sub = host.add_subparsers(dest="host_command", required=True)
    start = host_sub.add_parser(
        "start", help="boot a lab host and keep it running in the foreground until Ctrl-C or SIGTERM",
        description="Boots the newest built host image (built now if there is none; `lab host build` rebuilds it "
                    "when its recipe, init or inputs changed) under TCG with EL2 (arm64 KVM inside), prints "
                    "`ready: ssh://…` when SSH answers, and stops the host when interrupted. It runs in the "
                    "foreground so that no host outlives its command: for a long-lived host run it in a terminal "
                    "or as a systemd service.")
    build = host_sub.add_parser("build", help="build (or find cached) a lab host image; builds the lab's arm64 QEMU "
                                              "first if needed (about 15 minutes)")
    for command in (start, build):
        command.add_argument("name", nargs="?", default="kvm-host", help="host image recipe (default: kvm-host)")
        command.add_argument("--kernel-deb", metavar="linux-image-…=VERSION",
                             help="the host's Debian kernel, e.g. linux-image-cloud-arm64=6.12.117-1")
    start.add_argument("--memory", type=_count(1 << 20), default=HOST_MEMORY_MIB, metavar="MIB",
                       help=f"host RAM (default: {HOST_MEMORY_MIB}: a system guest takes 2048 of it)")
    start.add_argument("--cpus", type=_count(64), default=2, metavar="N", help="host CPUs (default: 2)")
    start.set_defaults(handler=commands.host_start)
    build.add_argument("--refresh", action="store_true", help="refresh the package lists first")
    build.set_defaults(handler=commands.host_build)
    host_sub.add_parser("list", help="the hosts this lab started (its hosts file)").set_defaults(
        handler=commands.host_list)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_signals() -> Iterator[bool]:
    """Makes SIGINT and SIGTERM stop the lab cleanly, and yields whether the lab owns them.

    A program that handles SIGTERM itself and calls main() (pytest, with the tests' conftest) keeps its
    handlers and its interrupt: main() must not swallow the signal that should stop the whole program.
    Either way the handlers are as they were when main() returns."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    owned = previous[signal.SIGTERM] in (signal.SIG_DFL, signal.SIG_IGN, None)
    if owned:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        yield owned
    finally:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)


def line_buffered_output() -> None:
    """Each progress line reaches a pipe as it is printed: a nightly log, `tee` or a test reading `lab host start`
    would otherwise see a long build's lines in 8 KB lumps, or not at all before it is stopped."""
    if isinstance(sys.stdout, io.TextIOWrapper) and not sys.stdout.line_buffering:
        sys.stdout.reconfigure(line_buffering=True)


def main(argv: list[str] | None = None) -> int:
    """The `lab` command. SIGINT and SIGTERM always stop it cleanly, even when it was started with SIGINT
    ignored (a script's background job): srun and the matrix engines stop their labs with SIGINT."""
    with _stop_signals() as owned:
        args = parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        line_buffered_output()
        logs.configure(args.verbose)
        try:
            handler: Callable[[argparse.Namespace], int] = args.handler
            return handler(args)
        except LabError as error:
            print(f"lab: error: {printable(str(error))}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            print("lab: interrupted; QEMU stopped and logs kept", file=sys.stderr)
            if not owned:
                raise
            return 130
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


if __name__ == "__main__":
    sys.exit(main())
