"""The lab's shared words: guest arches, console marks, PSCI function IDs and power-off classes.

Each is defined here once. Steps, witnesses, the verdict, the HTML report, the benchmarks and
the JSON schemas' enums all refer to these (tests/test_vocabulary.py checks the schemas), so
that, say, "the image was saved" means the same console line to every reader. Pure data.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from enum import StrEnum

from lab.errors import UsageError


class PowerInterface(StrEnum):
    """How a guest tells the platform it powers off: what the verdict's class names."""

    PSCI = "psci"
    """Arm's PSCI: SYSTEM_OFF, or SYSTEM_OFF2 for a hibernation."""
    ACPI = "acpi"
    """ACPI sleep states: S5 to power off, S4 for a hibernation."""


@dataclass(frozen=True)
class GuestArch:
    """One guest architecture under each of the names the lab meets it by."""

    debian: str
    """Debian's name (arm64, amd64): image recipes and packages."""
    qemu: str
    """QEMU's and the kernel's name (aarch64, x86_64): `qemu-system-*`, `uname -m`."""
    multiarch: str
    """Debian's multiarch triplet: where shared libraries live in packages."""
    power_interface: PowerInterface

    @property
    def names(self) -> tuple[str, str]:
        return self.debian, self.qemu


ARM64 = GuestArch("arm64", "aarch64", "aarch64-linux-gnu", PowerInterface.PSCI)
AMD64 = GuestArch("amd64", "x86_64", "x86_64-linux-gnu", PowerInterface.ACPI)
GUEST_ARCHES = (ARM64, AMD64)


def guest_arch(name: str) -> GuestArch:
    """An arch by any of its names (arm64 or aarch64, amd64 or x86_64)."""
    for arch in GUEST_ARCHES:
        if name in arch.names:
            return arch
    known = ", ".join(n for arch in GUEST_ARCHES for n in arch.names)
    raise UsageError(f"unknown arch {name!r} (use one of {known})")


def host_arch() -> str:
    """This host's arch in QEMU's naming (what KVM can run natively)."""
    machine = platform.machine()
    return next((arch.qemu for arch in GUEST_ARCHES if machine in arch.names), machine)


class HibernateVia(StrEnum):
    """How a guest is told to hibernate."""

    SYSFS = "sysfs"
    """`echo disk > /sys/power/state`: the kernel alone."""
    SYSTEMD = "systemd"
    """`systemctl hibernate`: logind's checks, systemd-sleep choosing the swap area, then the kernel."""


class ImageOn(StrEnum):
    """Where the hibernation image is written."""

    PARTITION = "partition"
    FILE = "file"
    """A swap file in the root filesystem, found by the kernel through `resume_offset`."""


class ResumeFrom(StrEnum):
    """How the resuming boot learns where the image is."""

    CMDLINE = "cmdline"
    """`resume=` (and `resume_offset=`) on the kernel command line."""
    INITRAMFS = "initramfs"
    """Only the initramfs's own configuration (initramfs-tools' `RESUME=`)."""
    EFI_VARIABLE = "efi-variable"
    """systemd's `HibernateLocation` EFI variable (systemd >= 255): UEFI, and systemd in the initrd (dracut)."""


class InitramfsGenerator(StrEnum):
    """What makes a system image's initramfs, and so what can find a hibernation image at boot."""

    INITRAMFS_TOOLS = "initramfs-tools"
    """Debian's and Ubuntu's: its local-premount script resumes from `resume=` or its own `RESUME=`."""
    DRACUT = "dracut"
    """Fedora's, RHEL's and Amazon Linux's: systemd in the initrd, which also reads `HibernateLocation`."""


class ConsoleMark(StrEnum):
    """Console lines that mean something to the lab, named once for every reader."""

    READY = "ready"
    HIBERNATION_ENTRY = "hibernation_entry"
    IMAGE_SAVED = "image_saved"
    POWER_DOWN = "power_down"
    RESUMED = "resumed"
    SIGNATURE_MISMATCH = "signature_mismatch"
    RESTARTING = "restarting"
    PANIC = "panic"
    OOPS = "oops"
    SYSTEMD_HIBERNATE = "systemd_hibernate"
    SYSTEMD_RETURNED = "systemd_returned"


CONSOLE_PATTERNS: dict[ConsoleMark, re.Pattern[str]] = {
    ConsoleMark.READY: re.compile(r"lab-(?:init|system): ready"),
    ConsoleMark.HIBERNATION_ENTRY: re.compile(r"PM: hibernation: hibernation entry"),
    ConsoleMark.IMAGE_SAVED: re.compile(r"PM: Image saving done|PM: hibernation: Wrote \d+ kbytes"),
    ConsoleMark.POWER_DOWN: re.compile(r"reboot: Power down|ACPI: PM: Preparing to enter system sleep state S[45]"),
    ConsoleMark.RESUMED: re.compile(r"PM: hibernation: hibernation exit"),
    ConsoleMark.SIGNATURE_MISMATCH: re.compile(r"hardware signature mismatch"),
    ConsoleMark.RESTARTING: re.compile(r"reboot: Restarting system"),
    ConsoleMark.PANIC: re.compile(r"Kernel panic"),
    ConsoleMark.OOPS: re.compile(r"Internal error: Oops|\bOops\b|BUG:"),
    ConsoleMark.SYSTEMD_HIBERNATE: re.compile(
        r"lab-system: systemd-sleep pre hibernate|Starting \S*systemd-hibernate\.service"),
    ConsoleMark.SYSTEMD_RETURNED: re.compile(
        r"lab-system: systemd-sleep post hibernate|Finished \S*systemd-hibernate\.service"),
}
"""A system image's sleep hook says when systemd-sleep hibernates and returns (images/system/lab-sleep); systemd's
own status lines, which say so while it boots or shuts down, keep their colours in the log: `\\S*` steps over them."""
CONSOLE_LABELS: dict[ConsoleMark, str] = {
    ConsoleMark.READY: "lab-init ready",
    ConsoleMark.HIBERNATION_ENTRY: "hibernation entry",
    ConsoleMark.IMAGE_SAVED: "image saved",
    ConsoleMark.POWER_DOWN: "Power down",
    ConsoleMark.RESUMED: "hibernation exit",
    ConsoleMark.SIGNATURE_MISMATCH: "hw signature mismatch",
    ConsoleMark.RESTARTING: "restarting",
    ConsoleMark.PANIC: "Kernel panic",
    ConsoleMark.OOPS: "Oops/BUG",
    ConsoleMark.SYSTEMD_HIBERNATE: "systemd hibernates",
    ConsoleMark.SYSTEMD_RETURNED: "systemd returned",
}
KERNEL_TROUBLE = re.compile(r"Kernel panic|\bOops\b|BUG:|Call trace")
"""What no healthy boot prints: the verdict's console health check uses it."""
KERNEL_FAULT = re.compile(
    rf"\[\s*\d+\.\d+\][^\n]*(?:{CONSOLE_PATTERNS[ConsoleMark.PANIC].pattern}|{CONSOLE_PATTERNS[ConsoleMark.OOPS].pattern})")
"""A kernel line (timestamped, so no userspace text) with a panic, an Oops or a BUG: the console's
fail-fast wait ends once such a line is followed by silence (a WARN's `Call trace` alone is no fault)."""
KERNEL_BANNER = re.compile(r"Linux version \d")
"""The kernel's first printed line: the accelerator probe waits for it on an early console."""
KERNEL_TIMESTAMP = re.compile(r"\[\s*(\d+\.\d+)\]")
"""The kernel's own `[   1.234567]` prefix: seconds since the kernel started. Search for it, do not match: a
message the kernel prints while a userspace line has no newline yet lands in the middle of that line
(`Begin: Running /scripts/local-premount ... [   36.58] PM: Image not found (code -22)`)."""


def console_marks(line: str) -> list[ConsoleMark]:
    return [mark for mark, pattern in CONSOLE_PATTERNS.items() if pattern.search(line)]


PSCI_VERSION = 0x84000000
PSCI_CPU_SUSPEND = 0x84000001
PSCI_CPU_SUSPEND_64 = 0xC4000001
PSCI_CPU_OFF = 0x84000002
PSCI_CPU_ON = 0x84000003
PSCI_CPU_ON_64 = 0xC4000003
PSCI_AFFINITY_INFO = 0x84000004
PSCI_AFFINITY_INFO_64 = 0xC4000004
PSCI_MIGRATE_INFO_TYPE = 0x84000006
PSCI_SYSTEM_OFF = 0x84000008
PSCI_SYSTEM_RESET = 0x84000009
PSCI_FEATURES = 0x8400000A
PSCI_SYSTEM_SUSPEND = 0x8400000E
PSCI_SYSTEM_SUSPEND_64 = 0xC400000E
PSCI_SYSTEM_RESET2 = 0x84000012
PSCI_SYSTEM_RESET2_64 = 0xC4000012
PSCI_SYSTEM_OFF2 = 0x84000015
PSCI_SYSTEM_OFF2_64 = 0xC4000015
SMCCC_VERSION = 0x80000000
SMCCC_ARCH_FEATURES = 0x80000001

SYSTEM_OFF2_IDS = frozenset({PSCI_SYSTEM_OFF2, PSCI_SYSTEM_OFF2_64})
SYSTEM_RESET_IDS = frozenset({PSCI_SYSTEM_RESET, PSCI_SYSTEM_RESET2, PSCI_SYSTEM_RESET2_64})
HIBERNATE_OFF = 1 << 0
"""PSCI_1_3_OFF_TYPE_HIBERNATE_OFF: the SYSTEM_OFF2 type, and the bit PSCI_FEATURES(SYSTEM_OFF2) sets."""

PSCI_FUNCTION_NAMES: dict[int, str] = {
    PSCI_VERSION: "PSCI_VERSION",
    PSCI_CPU_SUSPEND: "CPU_SUSPEND",
    PSCI_CPU_SUSPEND_64: "CPU_SUSPEND64",
    PSCI_CPU_OFF: "CPU_OFF",
    PSCI_CPU_ON: "CPU_ON",
    PSCI_CPU_ON_64: "CPU_ON64",
    PSCI_AFFINITY_INFO: "AFFINITY_INFO",
    PSCI_AFFINITY_INFO_64: "AFFINITY_INFO64",
    PSCI_MIGRATE_INFO_TYPE: "MIGRATE_INFO_TYPE",
    PSCI_SYSTEM_OFF: "SYSTEM_OFF",
    PSCI_SYSTEM_RESET: "SYSTEM_RESET",
    PSCI_FEATURES: "PSCI_FEATURES",
    PSCI_SYSTEM_SUSPEND: "SYSTEM_SUSPEND",
    PSCI_SYSTEM_SUSPEND_64: "SYSTEM_SUSPEND64",
    PSCI_SYSTEM_RESET2: "SYSTEM_RESET2",
    PSCI_SYSTEM_RESET2_64: "SYSTEM_RESET2_64",
    PSCI_SYSTEM_OFF2: "SYSTEM_OFF2",
    PSCI_SYSTEM_OFF2_64: "SYSTEM_OFF2_64",
    SMCCC_VERSION: "SMCCC_VERSION",
    SMCCC_ARCH_FEATURES: "SMCCC_ARCH_FEATURES",
}


def psci_function_name(function_id: int) -> str:
    return PSCI_FUNCTION_NAMES.get(function_id, f"0x{function_id:08x}")


class PowerOffClass(StrEnum):
    """How a guest went away, as the verdict classifies it."""

    HIBERNATE_OFF2 = "hibernate-off2"
    """An image was written and a VMM-side witness saw PSCI SYSTEM_OFF2."""
    HIBERNATE_S4 = "hibernate-s4"
    """An image was written and a VMM-side witness saw ACPI S4 (x86): SYSTEM_OFF2's counterpart."""
    HIBERNATE_OFF = "hibernate-off"
    """An image was written and the VMM saw a plain power-off, though it could have seen OFF2."""
    HIBERNATE = "hibernate"
    """An image was written, but no witness could tell whether the power-off was SYSTEM_OFF2."""
    POWEROFF = "poweroff"
    CRASH = "crash"
    """The guest panicked or reset."""
    HANG = "hang"
    """QEMU ran on, but the guest never powered off."""
    ABORTED = "aborted"
    """The guest gave up: its power-off command returned (e.g. hibernation failed) and it kept running."""
    VMM_CRASH = "vmm-crash"
    """QEMU itself died (killed by a signal, or an exit without a shutdown): not the guest's doing."""
    VMM_HANG = "vmm-hang"
    """QEMU itself was stopped (SIGSTOP) and ran nothing: not the guest's doing."""


HIBERNATE_SIGNALLED = {PowerInterface.PSCI: PowerOffClass.HIBERNATE_OFF2,
                       PowerInterface.ACPI: PowerOffClass.HIBERNATE_S4}
"""The class of a hibernation the platform was told of, by how the guest tells it."""
HIBERNATED = (PowerOffClass.HIBERNATE_OFF2, PowerOffClass.HIBERNATE_S4, PowerOffClass.HIBERNATE_OFF,
              PowerOffClass.HIBERNATE)


class Intent(StrEnum):
    """What a power-off step asks of the guest (the step's kind)."""

    HIBERNATE = "hibernate"
    POWEROFF = "poweroff"
    CRASH = "crash"


class BootKind(StrEnum):
    """How a boot came up."""

    FRESH = "fresh"
    RESUMED = "resumed"
    """The kernel restored a hibernation image."""
    PANICKED = "panicked"


class RunStatus(StrEnum):
    """A run's verdict in one word."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"
    """Nothing was judged: the lab could not set the run up."""
