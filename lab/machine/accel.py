"""Which accelerator can run a guest here: KVM only when it really works, TCG otherwise.

The probes start QEMU through Machine, the lab's one launch path, on the lab's own machine models.
"""

from __future__ import annotations

import fcntl
import functools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ChannelError, MachineError, SetupError, UsageError, WaitTimeout
from lab.hosts.base import Host
from lab.hosts.local import LOCAL, program_on
from lab.machine.process import Machine
from lab.machine.spec import MachineSpec
from lab.rundir import BootFiles
from lab.vocabulary import KERNEL_BANNER, host_arch

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
PROBE_QMP_SECONDS = 5.0
PROBE_MEMORY_MIB = 256
PROBE_BOOT_SECONDS = 20.0
EARLY_CONSOLE = {"aarch64": "earlycon", "x86_64": "earlyprintk=ttyS0"}
"""Kernel arguments that print the banner on the first serial port before any driver is up."""
STOPPED_STATES = frozenset({"internal-error", "guest-panicked", "io-error", "shutdown"})


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator picked for one guest arch, and why (shown in reports and `lab doctor`)."""

    name: str
    reason: str


def kvm_status(guest_arch: str, kernel: Path | None = None) -> tuple[bool, str]:
    """Whether KVM can run `guest_arch` guests on this host, with the reason when it cannot.

    With `kernel`, KVM must also start that kernel: a run passes the kernel it is about to boot.
    """
    host = host_arch()
    if host != guest_arch:
        return False, f"host is {host}, guest is {guest_arch}: KVM needs the same arch"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return False, f"/dev/kvm unusable: {error.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as error:
        return False, f"/dev/kvm does not answer KVM_GET_API_VERSION: {error.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"/dev/kvm reports API version {version}, expected {KVM_API_VERSION}"
    binary = program_on(LOCAL, f"qemu-system-{guest_arch}")
    if binary is None:
        return False, f"qemu-system-{guest_arch} not found"
    return _probe_kvm(binary, guest_arch, kernel)


@dataclass(frozen=True)
class ProbeOutcome:
    """Whether QEMU came up with some options; `error` is its last stderr line when it did not."""

    works: bool
    error: str = ""


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def probe_spec(binary: Path, accel: str, guest_arch: str, kernel: Path | None = None,
               gdbstub: bool = False) -> MachineSpec:
    """The lab's machine model for `guest_arch` on `accel`, small, with `kernel` (booted with only its early
    console) or nothing to boot."""
    append = f"{EARLY_CONSOLE[guest_arch]} panic=-1" if kernel is not None else ""
    return MachineSpec(arch=guest_arch, kernel=kernel, initrd=None, append=append, accel=accel,
                       memory_mib=PROBE_MEMORY_MIB, cpus=1, qemu=binary, gdbstub=gdbstub)


def probe_machine(spec: MachineSpec, judge: Callable[[Machine], str | None], host: Host = LOCAL) -> ProbeOutcome:
    """Launch `spec` paused on `host` and let `judge` say what went wrong, or None. QEMU is always stopped
    and reaped; when it dies at start, the outcome carries the last lines it printed."""
    with tempfile.TemporaryDirectory(prefix="lab-probe-") as scratch:
        files = BootFiles(Path(scratch), "probe")
        try:
            with Machine(spec, files, time.monotonic(), host, trouble_quiet=None) as machine:
                machine.launch(PROBE_QMP_SECONDS * host.patience)
                problem = judge(machine)
        except WaitTimeout:
            problem = f"no QMP answer within {PROBE_QMP_SECONDS:g}s although the process kept running"
        except MachineError as error:
            problem = files.stderr_tail() or str(error)
        except (ChannelError, SetupError) as error:
            problem = str(error)
    return ProbeOutcome(problem is None, problem or "")


def _accel_in_use(machine: Machine, accel: str) -> str | None:
    """None when QEMU answers query-status and query-kvm says `accel` is the one running; else why not."""
    status = machine.qmp.execute("query-status", timeout=PROBE_QMP_SECONDS)
    kvm = machine.qmp.execute("query-kvm", timeout=PROBE_QMP_SECONDS)
    if not isinstance(status, dict) or "status" not in status:
        return f"query-status answered {status!r}"
    kvm_enabled = bool(kvm.get("enabled"))
    if kvm_enabled != (accel == "kvm"):
        return f"QMP query-kvm says {'kvm' if kvm_enabled else 'another accelerator'} is in use, not {accel}"
    return None


def probe_accel(binary: Path, accel: str, guest_arch: str, host: Host = LOCAL) -> ProbeOutcome:
    """Start the lab's machine model paused on `accel` alone; it works when QMP confirms that accelerator.

    A process that merely stays up proves nothing: only QEMU answers QMP, and it does so once its
    accelerator is set up.
    """
    return probe_machine(probe_spec(binary, accel, guest_arch), lambda machine: _accel_in_use(machine, accel), host)


def _vm_stopped(machine: Machine) -> str | None:
    """Why the probe's guest stopped running (QEMU exited, or its VM stopped in a state no kernel leaves)."""
    if fault := machine.fault():
        return fault
    status = machine.qmp.execute("query-status", timeout=PROBE_QMP_SECONDS).get("status")
    if status in STOPPED_STATES:
        return f"the VM stopped ({status}): {first_line(machine.files.read_stderr())}"
    return None


def _kernel_banner(machine: Machine, seconds: float) -> str | None:
    """None once the kernel's banner is on the console; else why it never came."""
    machine.console.vmm_fault = lambda: _vm_stopped(machine)
    machine.resume()
    try:
        machine.console.expect(KERNEL_BANNER.pattern, seconds, "the kernel's banner")
    except WaitTimeout:
        return f"no kernel banner on the early console within {seconds:g}s"
    except ChannelError as error:
        if machine.running:
            return str(error)
        return machine.files.stderr_tail() or f"QEMU exited before the banner ({error})"
    return None


def probe_kernel(binary: Path, accel: str, guest_arch: str, kernel: Path, host: Host = LOCAL) -> ProbeOutcome:
    """Boot `kernel` (no initramfs) on the lab's machine model until it prints its banner.

    A paused machine proves that a vCPU can be made, not that it runs a kernel: seen here, a KVM
    that starts machines but whose instruction emulation stops the x86 kernel's decompressor
    with an internal error.
    """
    seconds = PROBE_BOOT_SECONDS * host.patience
    return probe_machine(probe_spec(binary, accel, guest_arch, Path(host.file_for(kernel))),
                         lambda machine: _kernel_banner(machine, seconds), host)


@functools.cache
def _probe_kvm(binary: Path, guest_arch: str, kernel: Path | None) -> tuple[bool, str]:
    """Start the lab's own machine model paused under KVM: /dev/kvm can answer ioctls and still
    refuse a vCPU (seen here: x86 guests abort on MSR writes without nested virtualisation); then
    boot `kernel` on it, when given."""
    outcome = probe_accel(binary, "kvm", guest_arch)
    if not outcome.works:
        return False, f"a KVM machine fails to start: {outcome.error}"
    if kernel is None:
        return True, "/dev/kvm answers and a paused KVM machine starts"
    started = probe_kernel(binary, "kvm", guest_arch, kernel)
    if not started.works:
        return False, f"a KVM machine starts but the kernel does not boot on it: {started.error}"
    return True, "/dev/kvm answers and the kernel boots on a KVM machine"


def _kvm_on(host: Host, guest_arch: str, kernel: Path | None = None) -> tuple[bool, str]:
    """Whether a lab host's KVM can run `guest_arch` guests: the same arch, a /dev/kvm there, and, as on
    this machine, the run's kernel booting to its banner on a KVM machine there."""
    machine = host.run(["uname", "-m"]).text().strip()
    arch = "aarch64" if machine in ("aarch64", "arm64") else machine
    if arch != guest_arch:
        return False, f"host {host.name} is {arch}, guest is {guest_arch}: KVM needs the same arch"
    if host.run(["test", "-c", "/dev/kvm"]).returncode != 0:
        return False, f"host {host.name} has no /dev/kvm"
    if kernel is None:
        return True, f"/dev/kvm on host {host.name}"
    binary = program_on(host, f"qemu-system-{guest_arch}")
    if binary is None:
        return False, f"host {host.name} has no qemu-system-{guest_arch}"
    started = probe_kernel(binary, "kvm", guest_arch, kernel, host)
    if started.works:
        return True, f"/dev/kvm on host {host.name} and the kernel boots on a KVM machine there"
    return False, f"a KVM machine on host {host.name} does not boot the kernel: {started.error[:200]}"


def choose_accel(guest_arch: str, requested: str | None = None, host: Host = LOCAL,
                 kernel: Path | None = None) -> AccelChoice:
    """`requested` ('kvm' or 'tcg') is honoured or refused with the reason; None means best available,
    where KVM must boot `kernel` (the run's own) to count."""
    if requested not in (None, "kvm", "tcg"):
        raise UsageError(f"unknown accelerator {requested!r} (use kvm or tcg)")
    if requested == "tcg":
        return AccelChoice("tcg", "requested")
    usable, reason = kvm_status(guest_arch, kernel) if host is LOCAL else _kvm_on(host, guest_arch, kernel)
    if requested == "kvm" and not usable:
        raise UsageError(f"--accel kvm is not possible here: {reason}")
    return AccelChoice("kvm", reason) if usable else AccelChoice("tcg", reason)
