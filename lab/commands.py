"""What each `lab` command does, once lab.cli has parsed its arguments: each returns the exit status.

Each imports what it uses when it runs: a warm `lab images build` must not pay for loading the runner,
the reports and the terminal library.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lab.disk.paths import checked_disk_path
from lab.errors import LabError, MachineError, SetupError, UsageError, printable
from lab.vocabulary import host_arch

if TYPE_CHECKING:
    from lab.image.guest_image import GuestImage


def _system_image_build(args: argparse.Namespace) -> int:
    from lab.image.system import SystemImageBuilder
    from lab.image.system_recipe import SystemRecipe

    if args.kernel_deb:
        raise UsageError(f"{args.name} is a system image: its kernel comes from its recipe, not --kernel-deb")
    recipe = SystemRecipe.named(args.name)
    image, built = SystemImageBuilder().build(recipe, refresh=args.refresh, log=lambda line: print(f"  {line}"))
    return _image_ready(image, built, guest=True)


def images_build(args: argparse.Namespace) -> int:
    from lab.image.recipe import ImageRecipe, ImageRole
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
    return _image_ready(image, built, guest=recipe.role is ImageRole.GUEST)


def _image_ready(image: GuestImage, built: bool, guest: bool) -> int:
    """Say what was built or found; a guest arm64 kernel's PSCI conduit is looked up now, once per kernel."""
    if guest and image.qemu_arch == "aarch64":
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


def images_list(args: argparse.Namespace) -> int:
    from lab.image.store import ImageStore, picked_by_runs

    images = ImageStore().cached()
    if not images:
        print("no images built yet: run `lab images build`")
    picked = picked_by_runs(images)
    for image in images:
        use = image.describe_use(picked.get(image.name) is image)
        if image.is_system:
            system = image.manifest["system"]
            print(f"{image.name:<16} {image.manifest['built']}  {image.path}  ({use})\n    system: kernel "
                  f"{image.kernel_release}, {len(image.manifest['packages'])} packages, initramfs by "
                  f"{system['initramfs_generator']}, swap file resume_offset={system['swap_file']['resume_offset']}")
            continue
        packages = ", ".join(f"{i['package']} {i['version']}" for i in image.manifest["inputs"] if "package" in i)
        print(f"{image.name:<16} {image.manifest['built']}  {image.path}  ({use})\n    {packages}")
    return 0


def disk_inspect(args: argparse.Namespace) -> int:
    from lab.disk.header import read_header

    header = read_header(checked_disk_path(Path(args.disk), args.force))
    print(json.dumps(header.to_json(), indent=2) if args.json else header.describe())
    return 0


def disk_set_signature(args: argparse.Namespace) -> int:
    from lab.disk.header import parse_signature_value, set_signature

    disk = checked_disk_path(Path(args.disk), args.force)
    before, after = set_signature(disk, parse_signature_value(args.value))
    print(f"hw_sig 0x{before.hw_sig:08x} -> 0x{after.hw_sig:08x}; flags {', '.join(after.flag_names) or 'none'}")
    return 0


def scenarios_list(args: argparse.Namespace) -> int:
    from lab.scenario.model import load_scenario, shipped_scenarios

    for path in shipped_scenarios():
        scenario = load_scenario(path)
        print(f"{scenario.name:<40} {scenario.description[:70]}")
    return 0


def scenarios_show(args: argparse.Namespace) -> int:
    from lab.scenario.model import find_scenario

    print(find_scenario(args.name).path.read_text(), end="")
    return 0


def scenario(args: argparse.Namespace) -> int:
    """Run a scenario; with --bisect-exit, exit with its verdict's `git bisect run` code."""
    if not args.bisect_exit:
        return _scenario(args)
    from lab.results.record import BISECT_ABORT, Status

    try:
        return _scenario(args)
    except UsageError as error:
        print(f"lab: error: {printable(str(error))}", file=sys.stderr)
        return BISECT_ABORT
    except LabError as error:
        print(f"lab: error: {printable(str(error))}", file=sys.stderr)
        return Status.ERROR.bisect_exit


def _scenario(args: argparse.Namespace) -> int:
    from lab.scenario.model import find_scenario

    scenario = find_scenario(args.name)
    disk = _free_disk(checked_disk_path(Path(args.disk), args.force_device, "--force-device")) if args.disk else None
    files = {option: _input_file(getattr(args, option.strip("-").replace("-", "_")), option)
             for option in ("--kernel", "--initrd", "--system-map")}
    if args.engine == "slurm":
        from lab.fleet.slurm_settings import load_settings
        from lab.fleet.slurm_srun import srun_scenario

        return srun_scenario(args.argv, scenario, args.arch, args.accel, load_settings(partition=args.partition))
    _local_only(args)
    from rich.console import Console

    from lab.report.terminal import TerminalReport
    from lab.rundir import RunDirectory
    from lab.scenario.run import RunOptions, run_scenario

    options = RunOptions(arch=args.arch, image=args.image, accel=args.accel, qemu=args.qemu, psci=args.psci,
                         runs_root=Path(args.runs_dir), kernel=files["--kernel"], kernel_deb=args.kernel_deb,
                         initrd=files["--initrd"], append=args.append, disk=disk,
                         off2_contract=args.off2_contract, system_map=files["--system-map"],
                         host=args.host, catalogue=Path(args.catalogue) if args.catalogue else None)
    report = TerminalReport(Console(highlight=False, soft_wrap=True))
    result = run_scenario(scenario, options, [report])
    report.kernel_phases(((RunDirectory(result.run_dir).read_result() or {}).get("observations") or {})
                         .get("kernel_phases") or {})
    report.verdict(result.verdict, result.run_dir, result.seconds)
    from lab.results.store import index_quietly

    for line in index_quietly(result.run_dir, options.runs_root):
        print(printable(line))
    if args.triage and not result.verdict.passed:
        _triage_run(result.run_dir, options.catalogue)
    if args.bisect_exit:
        from lab.results.record import Status

        return Status(result.verdict.status).bisect_exit
    return 0 if result.verdict.passed else 1


def triage(args: argparse.Namespace) -> int:
    _triage_run(Path(args.run_dir), Path(args.catalogue) if args.catalogue else None)
    return 0


def _triage_run(run_dir: Path, user_catalogue: Path | None) -> None:
    from rich.console import Console

    from lab.report.terminal import TerminalReport
    from lab.scenario.triage import triage

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"triage of {run_dir}: the pm_test ladder, then test_resume")
    found = triage(run_dir, [TerminalReport(console)], user_catalogue)
    print(f"pm_test ladder: {found.summary}")
    print(f"test_resume: {found.test_resume.describe()}")
    print(f"written: {found.path}")


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


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lab.fleet.engine import Engine
    from lab.fleet.matrix import load_matrix
    from lab.fleet.run import run_matrix

    matrix = load_matrix(Path(args.matrix))
    engine: Engine | None = None
    if args.engine == "slurm":
        from lab.fleet.slurm import SlurmEngine
        from lab.fleet.slurm_settings import load_settings

        engine = SlurmEngine(load_settings(matrix.slurm, args.partition))
    else:
        _local_only(args)
    result = run_matrix(matrix, Path(args.runs_dir), args.workers or matrix.workers,
                        Console(highlight=False, soft_wrap=True), engine, args.retries)
    return 0 if result.passed else 1


def cell(args: argparse.Namespace) -> int:
    from lab.fleet.cell import CellSpec, run_spec

    return run_spec(CellSpec.from_json(args.spec))


def qemu_build(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from lab.qemu.builder import build_qemu

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

        binary = build_qemu(args.target, args.source_version, args.jobs, say, progress)
    print(binary)
    return 0


def qemu_test(args: argparse.Namespace) -> int:
    from lab.image.recipe import DEFAULT_IMAGE
    from lab.image.store import ImageStore
    from lab.qemu.harness import newest_tree, run_all

    tree = newest_tree()
    image = ImageStore().latest(DEFAULT_IMAGE["arm64"])
    if image is None:
        raise SetupError(f"lab qemu test boots the default image {DEFAULT_IMAGE['arm64']}, which is not built: "
                         "run ./bootstrap (or `lab images build --arch arm64`)")
    image = image.verified()
    passed = run_all(tree, image.kernel, image.initramfs,
                     say=lambda line: print(f"lab qemu test: {line}", flush=True))
    return 0 if passed else 1


def qemu_list(args: argparse.Namespace) -> int:
    from lab.qemu.builds import build_records, known_builds

    for build in known_builds("aarch64"):
        print(build.describe())
    for record in build_records():
        if record["host"] != host_arch():
            print(f"{record['target']} (for {record['host']} hosts): {record['source']} + {len(record['series'])} "
                  f"patches, reports SYSTEM_OFF2 ({record['path']})")
    return 0


def host_build(args: argparse.Namespace) -> int:
    from lab.fleet.host_vm import build_host_image

    image, built = build_host_image(args.name, args.kernel_deb, args.refresh, log=lambda line: print(f"  {line}"))
    print(f"{'built' if built else 'cached'} {image.name} ({image.kernel_release}): {image.path}")
    return 0


def host_start(args: argparse.Namespace) -> int:
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


def host_list(args: argparse.Namespace) -> int:
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


def doctor(args: argparse.Namespace) -> int:
    from lab.doctor import diagnose, render

    findings = diagnose()
    print(render(findings))
    return 1 if any(finding.status == "missing" for finding in findings) else 0
