"""Which accelerator can run a guest here: KVM only when it really works, TCG otherwise."""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lab.errors import ChannelError, SetupError, UsageError, WaitTimeout
from lab.hosts.base import Host, HostProcess
from lab.hosts.local import LOCAL
from lab.lines import last_lines
from lab.machine.channels.qmp import QmpChannel
from lab.machine.process import die_with_parent
from lab.vocabulary import KERNEL_BANNER, host_arch

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
PROBE_QMP_SECONDS = 5.0
PROBE_REAP_SECONDS = 5.0
BARE_ARGS = ("-display", "none", "-nodefaults", "-no-user-config", "-monitor", "none")
PROBE_ARGS = (*BARE_ARGS, "-serial", "none", "-S")
NO_MACHINE = ("-machine", "none")
LAB_MACHINE = {"aarch64": "virt", "x86_64": "q35"}
PROBE_BOOT_SECONDS = 20.0
PROBE_POLL_SECONDS = 0.2
EARLY_CONSOLE = {"aarch64": "earlycon", "x86_64": "earlyprintk=ttyS0"}
"""Kernel arguments that print the banner on the first serial port before any driver is up."""
QMP_SOCKET = "qmp.sock"
CONSOLE_LOG = "console.log"
OUTPUT = "qemu.out"
"""A probe's QEMU output (stdout and stderr), beside its QMP socket in the probe's scratch directory."""
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
    binary = shutil.which(f"qemu-system-{guest_arch}")
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


@contextmanager
def launched(command: list[str], output: Path) -> Iterator[HostProcess]:
    """A probe's QEMU, started as every QEMU of the lab is (Host.start, dying with the lab) with its output
    in `output`, and stopped and reaped however the caller leaves."""
    process = LOCAL.start(command, output, setup=die_with_parent)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(PROBE_REAP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(PROBE_REAP_SECONDS)


def _said(output: Path) -> str:
    return output.read_text(errors="replace") if output.exists() else ""


def early_exit(process: HostProcess, output: Path, seconds: float) -> str | None:
    """None when QEMU is still up after `seconds`; otherwise why it exited."""
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        return None
    return " ".join(last_lines(_said(output))) or f"exited with status {process.returncode}"


def _accel_in_use(socket_path: Path, process: HostProcess, accel: str) -> str | None:
    """None when QEMU answers query-status and query-kvm says `accel` is the one running; else why not."""
    channel = QmpChannel(socket_path, socket_path.with_name("qmp-events.jsonl"), time.monotonic())
    try:
        channel.connect(PROBE_QMP_SECONDS, peer_gone=lambda: process.poll() is not None)
        status = channel.execute("query-status", timeout=PROBE_QMP_SECONDS)
        kvm = channel.execute("query-kvm", timeout=PROBE_QMP_SECONDS)
    except WaitTimeout:
        return f"no QMP answer within {PROBE_QMP_SECONDS:g}s although the process kept running"
    except ChannelError as error:
        if process.poll() is not None:
            return early_exit(process, socket_path.with_name(OUTPUT), PROBE_REAP_SECONDS)
        return str(error)
    finally:
        channel.close()
    if not isinstance(status, dict) or "status" not in status:
        return f"query-status answered {status!r}"
    kvm_enabled = bool(kvm.get("enabled"))
    if kvm_enabled != (accel == "kvm"):
        return f"QMP query-kvm says {'kvm' if kvm_enabled else 'another accelerator'} is in use, not {accel}"
    return None


def _probe(binary: str, args: Callable[[Path], list[str]],
           judge: Callable[[Path, HostProcess], str | None]) -> ProbeOutcome:
    """Start `binary` with `args(scratch)` and a QMP socket in a scratch directory; `judge` says what
    went wrong, or None. The process is always stopped and reaped."""
    with tempfile.TemporaryDirectory(prefix="lab-probe-") as scratch_dir:
        scratch = Path(scratch_dir)
        command = [binary, *args(scratch), "-qmp", f"unix:{scratch / QMP_SOCKET},server=on,wait=off"]
        try:
            with launched(command, scratch / OUTPUT) as process:
                problem = judge(scratch, process)
        except SetupError as failure:
            return ProbeOutcome(False, str(failure))
    return ProbeOutcome(problem is None, problem or "")


def probe_accel(binary: str, accel: str, machine: tuple[str, ...]) -> ProbeOutcome:
    """Start a paused QEMU with only `accel` (and `machine`); it works when QMP confirms that accelerator.

    A process that merely stays up proves nothing: only QEMU answers QMP, and it does so once its
    accelerator is set up.
    """
    return _probe(binary, lambda _: [*machine, "-accel", accel, *PROBE_ARGS],
                  lambda scratch, process: _accel_in_use(scratch / QMP_SOCKET, process, accel))


def _kernel_banner(scratch: Path, process: HostProcess) -> str | None:
    """None once the kernel's banner is on the early console; else why it never came."""
    console = scratch / CONSOLE_LOG
    channel = QmpChannel(scratch / QMP_SOCKET, scratch / "qmp-events.jsonl", time.monotonic())
    deadline = time.monotonic() + PROBE_BOOT_SECONDS
    try:
        channel.connect(PROBE_QMP_SECONDS, peer_gone=lambda: process.poll() is not None)
        while time.monotonic() < deadline:
            if console.exists() and KERNEL_BANNER.search(console.read_text(errors="replace")):
                return None
            status = channel.execute("query-status", timeout=PROBE_QMP_SECONDS).get("status")
            if status in STOPPED_STATES:
                process.terminate()
                process.wait(PROBE_REAP_SECONDS)
                return f"the VM stopped ({status}): {first_line(_said(scratch / OUTPUT))}"
            time.sleep(PROBE_POLL_SECONDS)
    except (WaitTimeout, ChannelError) as error:
        return early_exit(process, scratch / OUTPUT, PROBE_REAP_SECONDS) if process.poll() is not None else str(error)
    finally:
        channel.close()
    return f"no kernel banner on the early console within {PROBE_BOOT_SECONDS:g}s"


def probe_kernel(binary: str, accel: str, guest_arch: str, kernel: Path) -> ProbeOutcome:
    """Boot `kernel` (no initramfs) on the lab's machine model until it prints its banner.

    A paused machine proves that a vCPU can be made, not that it runs a kernel: seen here, a KVM
    that starts machines but whose instruction emulation stops the x86 kernel's decompressor
    with an internal error.
    """
    cpu = "host" if accel == "kvm" else "max"
    return _probe(binary, lambda scratch: [
        "-machine", LAB_MACHINE[guest_arch], "-cpu", cpu, "-accel", accel, "-m", "256", "-no-reboot", *BARE_ARGS,
        "-serial", f"file:{scratch / CONSOLE_LOG}", "-kernel", str(kernel),
        "-append", f"{EARLY_CONSOLE[guest_arch]} panic=-1"], _kernel_banner)


@functools.cache
def _probe_kvm(binary: str, guest_arch: str, kernel: Path | None) -> tuple[bool, str]:
    """Start the lab's own machine model paused under KVM: /dev/kvm can answer ioctls and still
    refuse a vCPU (seen here: x86 guests abort on MSR writes without nested virtualisation); then
    boot `kernel` on it, when given."""
    outcome = probe_accel(binary, "kvm", ("-machine", LAB_MACHINE[guest_arch], "-cpu", "host"))
    if not outcome.works:
        return False, f"a KVM machine fails to start: {outcome.error}"
    if kernel is None:
        return True, "/dev/kvm answers and a paused KVM machine starts"
    started = probe_kernel(binary, "kvm", guest_arch, kernel)
    if not started.works:
        return False, f"a KVM machine starts but the kernel does not boot on it: {started.error}"
    return True, "/dev/kvm answers and the kernel boots on a KVM machine"


def _kvm_on(host: Host, guest_arch: str) -> tuple[bool, str]:
    """Whether a lab host's KVM can run `guest_arch` guests: the same arch, and a /dev/kvm there."""
    machine = host.run(["uname", "-m"]).text().strip()
    arch = "aarch64" if machine in ("aarch64", "arm64") else machine
    if arch != guest_arch:
        return False, f"host {host.name} is {arch}, guest is {guest_arch}: KVM needs the same arch"
    if host.run(["test", "-c", "/dev/kvm"]).returncode != 0:
        return False, f"host {host.name} has no /dev/kvm"
    return True, f"/dev/kvm on host {host.name}"


def choose_accel(guest_arch: str, requested: str | None = None, host: Host = LOCAL,
                 kernel: Path | None = None) -> AccelChoice:
    """`requested` ('kvm' or 'tcg') is honoured or refused with the reason; None means best available,
    where KVM must boot `kernel` (the run's own) to count."""
    if requested not in (None, "kvm", "tcg"):
        raise UsageError(f"unknown accelerator {requested!r} (use kvm or tcg)")
    if requested == "tcg":
        return AccelChoice("tcg", "requested")
    usable, reason = kvm_status(guest_arch, kernel) if host is LOCAL else _kvm_on(host, guest_arch)
    if requested == "kvm" and not usable:
        raise UsageError(f"--accel kvm is not possible here: {reason}")
    return AccelChoice("kvm", reason) if usable else AccelChoice("tcg", reason)
