"""The `lab` command. Bad input gets one clear line and exit 2; a failed run exits 1.

Each command imports what it uses when it runs: a warm `lab images build` must not pay for loading
the runner, the reports and the terminal library.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from lab.disk.paths import checked_disk_path
from lab.errors import LabError, MachineError, UsageError, printable
from lab.nightly import add_commands
from lab.vocabulary import host_arch


def _system_image_build(args: argparse.Namespace) -> int:
    from lab.image.system import SystemImageBuilder
    from lab.image.system_recipe import SystemRecipe

    if args.kernel_deb:
        raise UsageError(f"{args.name} is a system image: its kernel comes from its recipe, not --kernel-deb")
    recipe = SystemRecipe.named(args.name)
    image, built = SystemImageBuilder().build(recipe, refresh=args.refresh, log=lambda line: print(f"  {line}"))
    if image.qemu_arch == "aarch64":
        _find_conduit_sites(image.kernel)
    print(f"{'built' if built else 'cached'} {image.name} ({image.kernel_release}): {image.path}")
    return 0


def _images_build(args: argparse.Namespace) -> int:
    from lab.image.recipe import GUEST_ROLE, ImageRecipe
    from lab.image.store import ImageStore
    from lab.image.system_recipe import is_system_recipe

    if args.name and is_system_recipe(args.name):
        return _system_image_build(args)
    recipe = ImageRecipe.named(args.name or f"debian-{args.arch}")
    if args.kernel_deb:
        recipe = recipe.pinned(args.kernel_deb)

    def log(line: str) -> None:
        print(f"  {line}")

    builder = None
    if recipe.qemu_builds:  # a host image: the runner's modules (paramiko among them) only when it needs them
        from lab.fleet.host_vm import qemu_builder

        builder = qemu_builder(log)
    image, built = ImageStore().build(recipe, refresh=args.refresh, log=log, qemu_builder=builder)
    if recipe.role == GUEST_ROLE and image.qemu_arch == "aarch64":
        _find_conduit_sites(image.kernel)
    print(f"{'built' if built else 'cached'} {image.name} ({image.kernel_release}): {image.path}")
    return 0


def _find_conduit_sites(kernel: Path) -> None:
    """Where the PSCI layer traps this kernel, found now (once per kernel) so the first run finds it cached."""
    from lab.psci.symbols import KernelSymbolsError, find_conduit_sites

    try:
        find_conduit_sites(kernel)
    except KernelSymbolsError as error:
        print(f"  the PSCI layer will need --system-map for this kernel: {error}")


def _images_list(args: argparse.Namespace) -> int:
    from lab.image.store import ImageStore

    images = ImageStore().list()
    if not images:
        print("no images built yet: run `lab images build`")
    for image in images:
        if image.is_system:
            system = image.manifest["system"]
            print(f"{image.name:<16} {image.manifest['built']}  {image.path}\n    system: kernel "
                  f"{image.kernel_release}, {len(image.manifest['packages'])} packages, initramfs by "
                  f"{system['initramfs_generator']}, swap file resume_offset={system['swap_file']['resume_offset']}")
            continue
        packages = ", ".join(f"{i['package']} {i['version']}" for i in image.manifest["inputs"] if "package" in i)
        print(f"{image.name:<16} {image.manifest['built']}  {image.path}\n    {packages}")
    return 0


def _image_inspect(args: argparse.Namespace) -> int:
    from lab.disk.header import read_header

    header = read_header(checked_disk_path(Path(args.disk), args.force))
    print(json.dumps(header.to_json(), indent=2) if args.json else header.describe())
    return 0


def _image_set_signature(args: argparse.Namespace) -> int:
    from lab.disk.header import parse_signature_value, set_signature

    disk = checked_disk_path(Path(args.disk), args.force)
    before, after = set_signature(disk, parse_signature_value(args.value))
    print(f"hw_sig 0x{before.hw_sig:08x} -> 0x{after.hw_sig:08x}; flags {', '.join(after.flag_names) or 'none'}")
    return 0


def _scenario(args: argparse.Namespace) -> int:
    if not args.bisect_exit:
        return _scenario_command(args)
    from lab.results.record import BISECT_ABORT, Status

    try:
        return _scenario_command(args)
    except UsageError as error:
        print(f"lab: error: {printable(str(error))}", file=sys.stderr)
        return BISECT_ABORT
    except LabError as error:
        print(f"lab: error: {printable(str(error))}", file=sys.stderr)
        return Status.ERROR.bisect_exit


def _scenario_command(args: argparse.Namespace) -> int:
    """Run (or list, or show) a scenario; with --bisect-exit, a run exits with its verdict's bisect code."""
    from lab.scenario.model import find_scenario, load_scenario, shipped_scenarios

    if args.name == "list":
        for path in shipped_scenarios():
            scenario = load_scenario(path)
            print(f"{scenario.name:<40} {scenario.description[:70]}")
        return 0
    if args.name == "show":
        if not args.target:
            raise UsageError("usage: lab scenario show NAME")
        print(find_scenario(args.target).path.read_text(), end="")
        return 0
    scenario = find_scenario(args.name)
    disk = _free_disk(checked_disk_path(Path(args.disk), args.force_device, "--force-device")) if args.disk else None
    files = {option: _input_file(getattr(args, option.strip("-").replace("-", "_")), option)
             for option in ("--kernel", "--initrd", "--system-map")}
    if args.engine == "slurm":
        from lab.fleet.slurm import load_settings, srun_scenario

        return srun_scenario(args.argv, scenario, args.arch, args.accel, load_settings(partition=args.partition))
    _local_only(args)
    from rich.console import Console

    from lab.report.terminal import TerminalReport
    from lab.scenario.run import RunOptions, run_scenario

    options = RunOptions(arch=args.arch, image=args.image, accel=args.accel, qemu=args.qemu, psci=args.psci,
                         runs_root=Path(args.runs_dir), kernel=files["--kernel"], kernel_deb=args.kernel_deb,
                         initrd=files["--initrd"], append=args.append, disk=disk,
                         off2_contract=args.off2_contract, system_map=files["--system-map"],
                         host=args.host)
    report = TerminalReport(Console(highlight=False, soft_wrap=True))
    result = run_scenario(scenario, options, [report])
    report.verdict(result.verdict, result.run_dir, result.seconds)
    from lab.results.store import index_quietly

    for line in index_quietly(result.run_dir, options.runs_root):
        print(printable(line))
    if args.bisect_exit:
        from lab.results.record import Status

        return Status(result.verdict.status).bisect_exit
    return 0 if result.verdict.passed else 1


def _free_disk(disk: Path) -> Path:
    """`disk` unless another run (or lab command) holds it: its copy could be caught half written."""
    from lab.disk.lock import DiskBusy, holder

    if (held_by := holder(disk)) is not None:
        raise DiskBusy(disk, held_by)
    return disk


def _input_file(value: str | None, option: str) -> Path | None:
    """A file the run reads whole and hashes: a device (`/dev/zero`) or a pipe would never end."""
    if not value:
        return None
    path = Path(value)
    if path.exists() and not path.is_file():
        raise UsageError(f"{option} {path} is not a regular file")
    return path


def _local_only(args: argparse.Namespace) -> None:
    if args.partition:
        raise UsageError("--partition goes with --engine slurm")


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lab.fleet.engine import Engine
    from lab.fleet.matrix import load_matrix
    from lab.fleet.run import run_matrix

    matrix = load_matrix(Path(args.matrix))
    engine: Engine | None = None
    if args.engine == "slurm":
        from lab.fleet.slurm import SlurmEngine, load_settings

        engine = SlurmEngine(load_settings(matrix.slurm, args.partition))
    else:
        _local_only(args)
    result = run_matrix(matrix, Path(args.runs_dir), args.workers or matrix.workers,
                        Console(highlight=False, soft_wrap=True), engine, args.retries)
    return 0 if result.passed else 1


def _cell(args: argparse.Namespace) -> int:
    from lab.fleet.cell import CellSpec, run_spec

    return run_spec(CellSpec.from_json(args.spec))


def _count(most: int) -> Callable[[str], int]:
    """A whole number from 1 to `most`, in ASCII digits (`isdigit` alone takes "²", which int() does not)."""

    def parse(value: str) -> int:
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= most:
            raise argparse.ArgumentTypeError(f"wants a whole number from 1 to {most}, got {value!r}")
        return int(value)

    return parse


def _qemu_build(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from lab.qemu.build import SOURCE_VERSION, build_qemu

    def say(line: str) -> None:
        print(f"lab qemu build: {line}", flush=True)

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, disable=not sys.stdout.isatty()) as bar:
        task = bar.add_task("compiling", total=None)
        shown = [0]

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if not sys.stdout.isatty() and done * 10 // total > shown[0]:
                shown[0] = done * 10 // total
                say(f"build: {done}/{total} steps")

        binary = build_qemu(args.target, args.source_version or SOURCE_VERSION, args.jobs, say, progress)
    print(binary)
    return 0


def _qemu_list(args: argparse.Namespace) -> int:
    from lab.qemu.build import build_records
    from lab.qemu.builds import known_builds

    for build in known_builds("aarch64"):
        print(build.describe())
    for record in build_records():
        if record["host"] != host_arch():
            print(f"{record['target']} (for {record['host']} hosts): {record['source']} + {len(record['series'])} "
                  f"patches, reports SYSTEM_OFF2 ({record['path']})")
    return 0


def _host_build(args: argparse.Namespace) -> int:
    from lab.fleet.host_vm import build_host_image

    image, built = build_host_image(args.name, args.kernel_deb, args.refresh, log=lambda line: print(f"  {line}"))
    print(f"{'built' if built else 'cached'} {image.name} ({image.kernel_release}): {image.path}")
    return 0


def _host_start(args: argparse.Namespace) -> int:
    import time

    from lab.fleet.host_vm import start_host

    with start_host(args.name, args.kernel_deb, args.memory, args.cpus, log=lambda line: print(f"  {line}")) as host:
        kvm = "yes" if host.kvm.available else f"no ({host.kvm.detail})"
        print(f"ready: {host.url} (kernel {host.kernel_release}, kvm: {kvm})", flush=True)
        print(f"  console and QEMU logs: {host.log_dir}; Ctrl-C or SIGTERM stops the host", flush=True)
        try:
            while host.machine.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print(f"stopping {host.url}", flush=True)
            return 0
    raise MachineError(f"the host's QEMU exited by itself; see {host.log_dir}")


def _host_list(args: argparse.Namespace) -> int:
    from lab.hosts.known import hosts_file, known_hosts

    hosts = known_hosts()
    if not hosts:
        print(f"no lab hosts running ({hosts_file()})")
    for host in hosts:
        state = "" if host.alive else "  [stale: its lab process is gone]"
        kvm = "yes" if host.kvm else "no"
        print(f"{host.url}  {host.image} kernel {host.kernel_release} kvm: {kvm}  pid {host.pid}  "
              f"since {host.started}{state}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from lab.doctor import diagnose, render

    findings = diagnose()
    print(render(findings))
    return 1 if any(finding.status == "missing" for finding in findings) else 0


def _engine_options(command: argparse.ArgumentParser, slurm: str) -> None:
    command.add_argument("--engine", choices=["local", "slurm"], default="local",
                         help=f"local: on this machine (default); slurm: {slurm}")
    command.add_argument("--partition", help="with --engine slurm: this partition for every cell, instead of "
                         "each host class's own")


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line too, like every other usage error; `--help` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="lab", description="The hibernation lab.")
    commands = top.add_subparsers(dest="command", required=True)

    images = commands.add_parser("images", help="build and list guest images")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build the default (or named) guest image")
    build.add_argument("name", nargs="?", help="image recipe name (default: debian-ARCH)")
    build.add_argument("--arch", default="arm64", choices=["arm64", "amd64"])
    build.add_argument("--refresh", action="store_true", help="fetch the package lists and resolve the recipe again "
                       "(otherwise the recorded resolution is used until LAB_RESOLUTION_MAX_AGE, default 7d)")
    build.add_argument("--kernel-deb", metavar="linux-image-…=VERSION", help="build with this Debian kernel")
    build.set_defaults(handler=_images_build)
    images_sub.add_parser("list", help="show cached images").set_defaults(handler=_images_list)

    image = commands.add_parser("image", help="inspect or alter a disk's hibernation header")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    inspect = image_sub.add_parser("inspect", help="show the swap area's hibernation header")
    inspect.add_argument("disk")
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--force", action="store_true", help="read a block or character device too")
    inspect.set_defaults(handler=_image_inspect)
    signature = image_sub.add_parser("set-signature", help="set HW_SIG and hw_sig in the header")
    signature.add_argument("disk")
    signature.add_argument("value", help="decimal or 0x-hex, 1..0xffffffff")
    signature.add_argument("--force", action="store_true", help="write to a block or character device too")
    signature.set_defaults(handler=_image_set_signature)

    scenario = commands.add_parser("scenario", help="run a scenario (or: list, show NAME)")
    scenario.add_argument("name", help="scenario name or file, or `list` / `show`")
    scenario.add_argument("target", nargs="?", help="with `show`: the scenario to show")
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
    scenario.add_argument("--host", metavar="ssh://USER@HOST:PORT",
                          help="run QEMU on a lab host over SSH (its key pinned: see `lab host list`)")
    _engine_options(scenario, "run on a node of the scenario's host class with srun, output live (docs/slurm.md)")
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
    scenario.set_defaults(handler=_scenario)

    run = commands.add_parser("run", help="run a matrix: scenarios on kernels, PSCI personalities, accelerators")
    run.add_argument("--matrix", required=True, metavar="FILE", help="the matrix file (YAML, see matrices/)")
    run.add_argument("--workers", type=_count(64), metavar="N", help="runs at a time (default: the file's, else 1)")
    run.add_argument("--runs-dir", default="runs", help="where the matrix directory goes (default: ./runs)")
    run.add_argument("--retries", type=_count(10), default=0, metavar="N",
                     help="run a failing cell up to N more times; one that then passes is flaky (default: 0)")
    _engine_options(run, "submit the cells as Slurm array jobs, one per host class; --workers per class "
                         "(docs/slurm.md)")
    run.set_defaults(handler=_run)
    qemu = commands.add_parser("qemu", help="the lab's own QEMU that reports SYSTEM_OFF2: build it, list builds")
    qemu_sub = qemu.add_subparsers(dest="qemu_command", required=True)
    qemu_build = qemu_sub.add_parser("build", help="build QEMU from Debian's source with the lab's SYSTEM_OFF2 "
                                                   "series (cached; prints the binary's path last)")
    qemu_build.add_argument("--target", default="native", choices=["native", "arm64"],
                            help="native: runs here; arm64: cross-built for an arm64 KVM host")
    qemu_build.add_argument("--source-version", default=None, metavar="VERSION",
                            help="Debian's qemu source version (default: the one the series is written against)")
    qemu_build.add_argument("--jobs", type=_count(256), metavar="N", help="parallel compile jobs (default: all cores)")
    qemu_build.set_defaults(handler=_qemu_build)
    qemu_sub.add_parser("list", help="the QEMU builds the lab knows and what each reports").set_defaults(
        handler=_qemu_list)
    cell = commands.add_parser("cell", help="run one matrix cell from its JSON spec: what an engine starts on a node")
    cell.add_argument("spec", help="the cell spec (JSON), as a Slurm job script gives it")
    cell.set_defaults(handler=_cell)
    commands.add_parser("doctor", help="what this host can run, and what to install").set_defaults(handler=_doctor)
    _host_commands(commands)
    add_commands(commands)
    return top


def _host_commands(commands: argparse._SubParsersAction) -> None:
    host = commands.add_parser("host", help="lab hosts: an emulated arm64 KVM host that runs guests' QEMU over SSH")
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
    start.add_argument("--memory", type=_count(1 << 20), default=3072, metavar="MIB", help="host RAM (default: 3072)")
    start.add_argument("--cpus", type=_count(64), default=2, metavar="N", help="host CPUs (default: 2)")
    start.set_defaults(handler=_host_start)
    build.add_argument("--refresh", action="store_true", help="refresh the package lists first")
    build.set_defaults(handler=_host_build)
    host_sub.add_parser("list", help="the hosts this lab started (its hosts file)").set_defaults(handler=_host_list)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The `lab` command. SIGINT and SIGTERM always stop it cleanly, even when it was started with SIGINT
    ignored (a script's background job): srun and the matrix engines stop their labs with SIGINT."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.handler(args)
    except LabError as error:
        print(f"lab: error: {printable(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("lab: interrupted; QEMU stopped and logs kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
