"""One scenario run, start to finish: run directory, guest, steps, verdict, artifacts.

Driving (the guest and its steps) and judging (witnesses, verdict) meet through recorded
observations only: the verdict never sees a machine or a channel, just what they left.
"""

from __future__ import annotations

import errno
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import __version__
from lab.digest import sha256_file
from lab.errors import LabError, RunDirectoryFull, SetupError, UsageError
from lab.events import EventLog, Listener, RunEnded, RunStarted
from lab.hosts.base import Host
from lab.hosts.local import LOCAL
from lab.hosts.logins import open_host
from lab.hosts.trace import kvm_trace_problem
from lab.image.guest_image import GuestImage
from lab.image.recipe import DEFAULT_IMAGE, DEFAULT_KERNEL, DEFAULT_SYSTEM_IMAGE
from lab.image.store import find_image
from lab.judge.catalogue import catalogue
from lab.judge.observations import Observations
from lab.judge.off2_contract import Off2Contract, contract_for
from lab.judge.phase_summary import kernel_phases
from lab.judge.verdict import RunVerdict, judge
from lab.machine.accel import AccelChoice, choose_accel
from lab.machine.channels.serial import trouble_quiet_seconds
from lab.psci.attach import GuestPsci, parse_personality, psci_attacher
from lab.psci.firmware import PsciPersonality
from lab.qemu.builds import QemuBuild, build_json, describe_build
from lab.report.html import write_html_report
from lab.report.junit import write_junit
from lab.report.reproduce import write_reproducer
from lab.report.result import write_result
from lab.rundir import RunDirectory, timestamp
from lab.scenario.guest import Guest
from lab.scenario.model import Scenario
from lab.scenario.pm_knobs import kernel_debug_append
from lab.scenario.steps import RunContext, run_steps
from lab.vocabulary import HibernateVia, guest_arch

HOST_MEMORY_MARGIN_MIB = 256
"""What QEMU takes on a lab host beside its guest's RAM."""


@dataclass(frozen=True)
class RunOptions:
    """What the user chose on the command line; scenario files say the rest."""

    arch: str = "arm64"
    image: str | None = None
    accel: str | None = None
    qemu: str | None = None
    """A QEMU build by name (debian, patched) or a binary's path; None: Debian's."""
    psci: str | None = None
    runs_root: Path = Path("runs")
    run_dir: Path | None = None
    kernel: Path | None = None
    kernel_deb: str | None = None
    initrd: Path | None = None
    append: str | None = None
    disk: Path | None = None
    off2_contract: str | None = None
    host: str | None = None
    """A lab host to run QEMU on, as ssh://user@host:port; None: this machine."""
    system_map: Path | None = None
    catalogue: Path | None = None
    """A user's kernel log catalogue, matched after the shipped one."""


@dataclass
class RunResult:
    run_dir: Path
    verdict: RunVerdict
    seconds: float


def image_for(scenario: Scenario, options: RunOptions, log: Callable[[str], None] = print) -> GuestImage:
    """The image to boot: the default (or named) one, one with a bug report's kernel, plus overrides."""
    defaults = DEFAULT_SYSTEM_IMAGE if scenario.system else DEFAULT_IMAGE
    name = options.image or scenario.image or defaults[guest_arch(options.arch).debian]
    kernel_is_deb = options.kernel is not None and options.kernel.suffix == ".deb"
    debs = (options.kernel,) if kernel_is_deb and options.kernel else ()
    image = find_image(name, options.kernel_deb or DEFAULT_KERNEL, debs, log)
    return image.with_overrides(None if kernel_is_deb else options.kernel, options.initrd, options.append)


def psci_for(scenario: Scenario, options: RunOptions, image: GuestImage, accel: str,
             build: QemuBuild) -> GuestPsci | None:
    """The PSCI v1.3 layer runs for arm64 guests on TCG where QEMU's own PSCI will not do: a stock
    QEMU's is v1.1, and a patched QEMU's is KVM's own, so only other personalities need the layer."""
    personality = parse_personality(options.psci or scenario.psci)
    if image.qemu_arch != "aarch64" or accel != "tcg" or personality is None:
        return None
    if build.reports_off2 and personality is PsciPersonality.KVM:
        return None
    return psci_attacher(personality, image, options.system_map, build.reports_off2)


def write_artifacts(run_dir: RunDirectory) -> None:
    """JUnit, the HTML report and reproduce.sh, from what the run directory holds."""
    write_junit(run_dir)
    write_html_report(run_dir)
    try:
        write_reproducer(run_dir)
    except SetupError as error:
        run_dir.reproducer_missing.write_text(f"no reproduce.sh: {error}\n")


@dataclass
class RunSetup:
    """What a run is made of once the lab has found it all: the image, the QEMU build, the accelerator,
    the PSCI layer, the OFF2 contract and the guest. Any of these may fail to be found (a set-up error)."""

    image: GuestImage
    build: QemuBuild
    accel: AccelChoice
    psci: GuestPsci | None
    contract: Off2Contract
    guest: Guest

    def environment(self, options: RunOptions, host: Host) -> dict[str, Any]:
        image = self.image
        return {
            "lab": __version__,
            "qemu": f"{self.build.name} {self.build.version}",
            "qemu_build": build_json(self.build),
            "host": f"{platform.system()} {platform.machine()} {platform.release()}",
            "lab_host": host.name,
            "guest_arch": image.qemu_arch,
            "accel": self.accel.name,
            "accel_reason": self.accel.reason,
            "psci_personality": self.psci.personality if self.psci else None,
            "off2_contract": str(self.contract),
            "image": {"name": image.name, "path": str(image.path), "kernel_release": image.kernel_release,
                      "kernel_pin": image.manifest.get("kernel_pin"),
                      "inputs": image.manifest.get("inputs", []), "outputs": image.manifest.get("outputs", {})},
            "boot_inputs": image.boot_inputs(),
            "disk_input": {"path": str(options.disk), "sha256": sha256_file(options.disk)} if options.disk else None,
            "kernel_append": self.guest.command_line(),
            "firmware": {"code": str(self.guest.uefi.code), "boot_loader": "systemd-boot"} if self.guest.uefi else None,
            "swap_area": self.guest.swap_area.to_json(),
            "kernel_trouble_quiet": self.guest.trouble_quiet,
        }


def set_up(scenario: Scenario, options: RunOptions, run_dir: RunDirectory, events: EventLog,
           host: Host) -> RunSetup:
    image = image_for(scenario, options)
    build = describe_build(options.qemu, image.qemu_arch, host)
    accel = choose_accel(image.qemu_arch, options.accel, host, image.kernel)
    if accel.name == "kvm" and image.qemu_arch == "aarch64" and (problem := kvm_trace_problem(host)):
        raise SetupError(f"cannot witness KVM's PSCI calls on {host.name}: {problem}")
    psci = psci_for(scenario, options, image, accel.name, build)
    contract = contract_for(image.qemu_arch, accel.name, psci is not None, build.off2_reporting,
                            options.off2_contract)
    paths = scenario.hibernation
    area = image.swap_area(paths.image_on)
    image.require_resume_path(area, paths.resume_from, scenario.uefi)
    if paths.via is HibernateVia.SYSTEMD and not image.is_system:
        raise UsageError(f"`hibernation: via: systemd` needs a system image (guest: system); "
                         f"{image.name} has no systemd")
    if host is not LOCAL:
        _require_memory(host, scenario.memory_mib, image.is_system)
    guest = Guest(image, run_dir, events, accel.name, build, psci, scenario.memory_mib, scenario.cpus, host,
                  trouble_quiet_seconds(scenario.kernel_trouble_quiet), swap_area=area,
                  boot_append=" ".join(filter(None, (image.boot_arguments(area, paths.resume_from),
                                                     *paths.kernel_arguments,
                                                     kernel_debug_append(scenario.pm_debug, scenario.initcall_debug)))),
                  uefi=scenario.uefi)
    return RunSetup(image, build, accel, psci, contract, guest)


def _full(error: OSError) -> RunDirectoryFull:
    """A run directory that cannot be written (its filesystem is full) ends the run; any other OSError is a bug."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunDirectoryFull(error)
    raise error


def _run_directory(scenario: Scenario, options: RunOptions) -> RunDirectory:
    """The run's directory (a new one, or the one a matrix cell was given), with room kept for its last files."""
    catalogue(options.catalogue)
    arch = guest_arch(options.arch)
    if scenario.arches and arch not in {guest_arch(a) for a in scenario.arches}:
        raise UsageError(f"scenario {scenario.name} is for {', '.join(scenario.arches)} guests only")
    run_dir = RunDirectory(options.run_dir) if options.run_dir else RunDirectory.create(
        options.runs_root, f"{timestamp()}-{scenario.name}")
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.keep_room()
    return run_dir


def _require_memory(host: Host, memory_mib: int, system: bool) -> None:
    """A lab host with too little free RAM for the guest is a set-up error, not a guest killed halfway. A
    system guest's disk overlay is in the host's RAM too, and holds up to an image as large as the guest's."""
    meminfo = host.run(["cat", "/proc/meminfo"]).text()
    free_kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None)
    if free_kib is None:
        raise SetupError(f"host {host.name} has no MemAvailable in /proc/meminfo")
    needed_mib = memory_mib * (2 if system else 1) + HOST_MEMORY_MARGIN_MIB
    if free_kib // 1024 < needed_mib:
        raise SetupError(f"host {host.name} has {free_kib // 1024} MiB of RAM free and this guest needs {needed_mib} "
                         f"({memory_mib} of RAM{', as much again for its disk' if system else ''} and QEMU's own): "
                         "give the host more (`lab host start --memory`)")


def run_scenario(scenario: Scenario, options: RunOptions, listeners: list[Listener]) -> RunResult:
    """Run one scenario into its run directory; a set-up error is re-raised after the artifacts are written."""
    started = time.monotonic()
    run_dir = _run_directory(scenario, options)
    events = EventLog(run_dir.events, started)
    events.listeners.extend(listeners)
    run_dir.write_scenario(scenario.source)
    observations = Observations()
    setup: RunSetup | None = None
    failure: LabError | None = None
    interrupted = False
    host: Host = LOCAL
    try:
        if options.host:
            host = open_host(options.host)
        setup = set_up(scenario, options, run_dir, events, host)
        events.emit(RunStarted, scenario=scenario.name, image=setup.image.name, accel=setup.accel.name,
                    accel_reason=setup.accel.reason, psci=setup.psci.personality if setup.psci else None,
                    qemu=setup.build.name)
        ctx = RunContext(scenario=scenario, guest=setup.guest, events=events, off2_contract=str(setup.contract),
                         observations=observations)
        setup.guest.prepare_disk(options.disk)
        run_steps(ctx, scenario.steps)
    except LabError as error:
        failure = error
    except KeyboardInterrupt:
        interrupted = True
    except OSError as error:
        failure = _full(error)
    finally:
        try:
            if setup is not None:
                setup.guest.close()
                setup.guest.collect()
        except LabError as error:
            failure = failure or error
        except OSError as error:
            failure = failure or _full(error)
        finally:
            host.close()
            run_dir.free_room()
    reason = "interrupted" if interrupted else str(failure) if failure is not None else None
    consoles = {boot.name: boot.read_console() for boot in run_dir.boots()}
    observations.kernel_phases = kernel_phases(consoles)
    verdict = judge(observations, consoles, reason, set_up_failed=setup is None and failure is not None,
                    lab_fault=failure is not None and failure.lab_fault, entries=catalogue(options.catalogue))
    seconds = time.monotonic() - started
    described = {"name": scenario.name, "path": str(scenario.path), "description": scenario.description}
    environment = setup.environment(options, host) if setup is not None else {"lab": __version__,
                                                                              "lab_host": host.name}
    write_result(run_dir, described, verdict, observations, events.steps_ended(), environment, seconds)
    events.emit(RunEnded, status=verdict.status, reason=verdict.reason)
    write_artifacts(run_dir)
    if interrupted:
        raise KeyboardInterrupt
    if failure is not None and (setup is None or isinstance(failure, UsageError)):
        raise failure
    return RunResult(run_dir.path, verdict, seconds)
