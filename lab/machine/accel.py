"""Which accelerator can run a guest here: KVM only when it really works, TCG otherwise."""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

from lab.errors import UsageError
from lab.vocabulary import host_arch

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator picked for one guest arch, and why (shown in reports and `lab doctor`)."""

    name: str
    reason: str


def kvm_status(guest_arch: str) -> tuple[bool, str]:
    """Whether KVM can run `guest_arch` guests on this host, with the reason when it cannot."""
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
    return _probe_kvm(binary, guest_arch)


@functools.cache
def _probe_kvm(binary: str, guest_arch: str) -> tuple[bool, str]:
    """Start the lab's own machine model paused under KVM: /dev/kvm can answer ioctls and still
    refuse a vCPU (seen here: x86 guests abort on MSR writes without nested virtualisation)."""
    machine = {"aarch64": "virt", "x86_64": "q35"}[guest_arch]
    command = [binary, "-accel", "kvm", "-machine", machine, "-cpu", "host", "-display", "none", "-nodefaults",
               "-no-user-config", "-S", "-monitor", "none", "-serial", "none"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        _, stderr = process.communicate(timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        return True, "/dev/kvm answers and a paused KVM machine starts"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = [line for line in stderr.splitlines() if line.strip()]
    detail = lines[0] if lines else f"exit status {process.returncode}"
    return False, f"a KVM machine fails to start: {detail}"


def choose_accel(guest_arch: str, requested: str | None = None) -> AccelChoice:
    """`requested` ('kvm' or 'tcg') is honoured or refused with the reason; None means best available."""
    if requested not in (None, "kvm", "tcg"):
        raise UsageError(f"unknown accelerator {requested!r} (use kvm or tcg)")
    usable, reason = kvm_status(guest_arch)
    if requested == "kvm" and not usable:
        raise UsageError(f"--accel kvm is not possible here: {reason}")
    if requested == "tcg":
        return AccelChoice("tcg", "requested")
    return AccelChoice("kvm", reason) if usable else AccelChoice("tcg", reason)
