"""The kernel's own account of a hibernation: its PM lines on one boot's console, as timed phases.

Every kernel prints how long it froze tasks, preallocated, wrote and read the image; with
`pm_debug_messages` (and a console loglevel that shows KERN_DEBUG) it also times each device
phase (`PM: noirq freeze of devices complete after 67.586 msecs`), and with `pm_print_times` each
device's callback (`virtio-pci 0000:00:02.0: PM: pci_pm_freeze returned 0 after 79 usecs`).
Durations are the kernel's own figures where it prints them, else differences of its timestamps
on one side of the restore (the restored kernel runs on the clock of the one that hibernated).
Pure text in, values out: nothing here launches or reads anything.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from lab.vocabulary import KERNEL_TIMESTAMP

SLOWEST_CALLBACKS = 5
"""Device callbacks kept per boot, slowest first."""


class PhaseKind(StrEnum):
    SYNC = "sync"
    FREEZE = "freeze"
    """Freezing tasks: user space, then the remaining freezable kernel threads."""
    PREALLOCATE = "preallocate"
    DEVICES = "devices"
    """One device phase (`freeze`, `late freeze`, `noirq quiesce`, `restore` …) of the PM core."""
    SNAPSHOT = "snapshot"
    """From the frozen tasks to the first page written: device freeze, the atomic copy, device thaw."""
    IMAGE_WRITE = "image-write"
    POWER_DOWN = "power-down"
    IMAGE_READ = "image-read"
    RESTORE = "restore"
    """In the restored kernel: from its first line to restarting tasks (device restore included)."""
    THAW = "thaw"


@dataclass
class KernelPhase:
    kind: PhaseKind
    name: str
    """What the kernel calls it: `freeze user space`, `devices: noirq freeze`, `image write`."""
    at: float
    """Kernel timestamp of the line that ended the phase (or the only line of it)."""
    seconds: float | None
    """How long it took, the kernel's own figure where it prints one; None when the start was not seen."""
    failed: bool = False
    line: str = ""
    kbytes: int | None = None
    mb_per_s: float | None = None
    detail: dict[str, int] = field(default_factory=dict)
    """Further counts the kernel gave: compressed kbytes, pages copied, zero pages."""

    @property
    def start(self) -> float:
        return self.at - (self.seconds or 0.0)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, {}, "")} | {
            "seconds": self.seconds, "failed": self.failed}


@dataclass(frozen=True)
class DeviceCallback:
    device: str
    callback: str
    phase: str
    """The device phase it ran in (the next `… of devices complete` line), or `?` when none followed."""
    usecs: int
    status: int


@dataclass
class BootPhases:
    """One boot's phases in console order, and its slowest device callbacks."""

    phases: list[KernelPhase] = field(default_factory=list)
    slowest_callbacks: list[DeviceCallback] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"phases": [p.to_json() for p in self.phases],
                "slowest_callbacks": [asdict(c) for c in self.slowest_callbacks]}

    def failed(self) -> list[KernelPhase]:
        return [phase for phase in self.phases if phase.failed]


_NUMBER = r"(\d+(?:\.\d+)?)"
_FREEZE = re.compile(rf"Freezing (user space processes|remaining freezable tasks) "
                     rf"(?:completed \(elapsed {_NUMBER} seconds\)|failed after {_NUMBER} seconds)")
_SYNC = re.compile(rf"Filesystems sync: {_NUMBER} seconds")
_PREALLOCATED = re.compile(rf"PM: (?:hibernation: )?Allocated (\d+) kbytes in {_NUMBER} seconds \({_NUMBER} MB/s\)")
_DEVICES = re.compile(rf"PM: (?:(noirq|late|early) )?(\w+) of devices (complete|aborted) after {_NUMBER} msecs")
_CALLBACK = re.compile(r"^(?P<device>\S+ \S+): (?:PM: )?(?P<callback>[\w.]+)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)? "
                       r"returned (?P<status>-?\d+) after (?P<usecs>\d+) usecs")
_IMAGE_CREATED = re.compile(r"Image created \((\d+) pages copied(?:, (\d+) zero pages)?\)")
_WRITE_START = re.compile(r"PM: (?:Compressing and saving image data|Saving image data pages)")
_READ_START = re.compile(r"PM: (?:Loading and decompressing image data|Loading image data pages)")
_MOVED = re.compile(rf"PM: (?:hibernation: )?(Wrote|Read) (\d+) kbytes in {_NUMBER} seconds \({_NUMBER} MB/s\)")
_COMPRESSED = re.compile(r"PM: Image size after compression: (\d+) kbytes")
_SAVED = re.compile(r"PM: Image saving done")
_SAVE_FAILED = re.compile(r"PM: Image saving failed: (-?\d+)")
_POWERED_DOWN = re.compile(r"reboot: Power down")
_RESTORED_KERNEL = re.compile(r"hibernate: Restored \d+ MTE pages|PM: hibernation: Hibernation image restored")
_THAW_START = re.compile(r"Restarting tasks(?::| \.\.\.)")
_THAW_DONE = re.compile(r"Restarting tasks(?:: Done| \.\.\. done)")


@dataclass
class _Reader:
    """The parser's state while it walks one console: the starts seen, the callbacks not yet placed."""

    boot: BootPhases = field(default_factory=BootPhases)
    frozen_at: float | None = None
    write_started: float | None = None
    read_started: float | None = None
    saved_at: float | None = None
    read_at: float | None = None
    restored_from: float | None = None
    thaw_from: float | None = None
    last_stamp: float | None = None
    pending: list[tuple[str, str, int, int]] = field(default_factory=list)
    callbacks: list[DeviceCallback] = field(default_factory=list)

    def add(self, kind: PhaseKind, name: str, at: float, seconds: float | None, line: str,
            **extra: Any) -> KernelPhase:
        phase = KernelPhase(kind, name, at, None if seconds is None else round(seconds, 6), line=line, **extra)
        self.boot.phases.append(phase)
        return phase

    def read(self, stamp: float, text: str, line: str) -> None:
        if self.read_at is not None and self.restored_from is None and self.last_stamp is not None \
                and stamp < self.last_stamp:
            self.restored_from = stamp
        self.last_stamp = stamp
        for handler in (self._timed, self._devices, self._image, self._restore):
            if handler(stamp, text, line):
                return

    def _timed(self, stamp: float, text: str, line: str) -> bool:
        if match := _SYNC.search(text):
            self.add(PhaseKind.SYNC, "filesystems sync", stamp, float(match[1]), line)
        elif match := _FREEZE.search(text):
            failed = match[3] is not None
            what = "user space" if match[1].startswith("user") else "kernel threads"
            self.add(PhaseKind.FREEZE, f"freeze {what}", stamp, float(match[3] or match[2]), line).failed = failed
            if what == "kernel threads" and not failed:
                self.frozen_at = stamp
        elif match := _PREALLOCATED.search(text):
            self.add(PhaseKind.PREALLOCATE, "preallocate image memory", stamp, float(match[2]), line,
                     kbytes=int(match[1]), mb_per_s=float(match[3]))
        else:
            return False
        return True

    def _devices(self, stamp: float, text: str, line: str) -> bool:
        if match := _CALLBACK.search(text):
            self.pending.append((match["device"], match["callback"], int(match["usecs"]), int(match["status"])))
            return True
        match = _DEVICES.search(text)
        if match is None:
            return False
        name = " ".join(word for word in (match[1], match[2]) if word)
        phase = self.add(PhaseKind.DEVICES, f"devices: {name}", stamp, float(match[4]) / 1000, line)
        phase.failed = match[3] == "aborted"
        self.callbacks += [DeviceCallback(device, callback, name, usecs, status)
                           for device, callback, usecs, status in self.pending]
        self.pending.clear()
        return True

    def _image(self, stamp: float, text: str, line: str) -> bool:
        if match := _IMAGE_CREATED.search(text):
            self.add(PhaseKind.SNAPSHOT, "atomic copy", stamp, None, line,
                     detail={"pages_copied": int(match[1]), "zero_pages": int(match[2] or 0)})
        elif _WRITE_START.search(text):
            self.write_started = stamp
            if self.frozen_at is not None:
                self.add(PhaseKind.SNAPSHOT, "snapshot", stamp, stamp - self.frozen_at, line)
        elif _READ_START.search(text):
            self.read_started = stamp
        elif match := _MOVED.search(text):
            write = match[1] == "Wrote"
            self.add(PhaseKind.IMAGE_WRITE if write else PhaseKind.IMAGE_READ, "image write" if write else "image read",
                     stamp, float(match[3]), line, kbytes=int(match[2]), mb_per_s=float(match[4]))
            if not write:
                self.read_at = stamp
        elif match := _COMPRESSED.search(text):
            written = [p for p in self.boot.phases if p.kind is PhaseKind.IMAGE_WRITE]
            if written:
                written[-1].detail["compressed_kbytes"] = int(match[1])
        elif _SAVED.search(text):
            self.saved_at = stamp
        elif _SAVE_FAILED.search(text):
            started = self.write_started
            self.add(PhaseKind.IMAGE_WRITE, "image write", stamp, None if started is None else stamp - started,
                     line).failed = True
        elif _POWERED_DOWN.search(text) and self.saved_at is not None:
            self.add(PhaseKind.POWER_DOWN, "power down", stamp, stamp - self.saved_at, line)
        else:
            return False
        return True

    def _restore(self, stamp: float, text: str, line: str) -> bool:
        if _RESTORED_KERNEL.search(text) and self.read_at is not None and self.restored_from is None:
            self.restored_from = stamp
        if _THAW_DONE.search(text):
            start = self.thaw_from if self.thaw_from is not None else stamp
            self.add(PhaseKind.THAW, "thaw tasks", stamp, stamp - start, line)
            self.thaw_from = None
            return True
        if _THAW_START.search(text):
            self.thaw_from = stamp
            if self.read_at is not None:
                restored = self.restored_from
                self.add(PhaseKind.RESTORE, "restore", stamp, None if restored is None else stamp - restored, line)
                self.read_at = None
            return True
        return False


def parse_kernel_phases(lines: list[str]) -> BootPhases:
    """The phases one boot's console shows, in order; lines without a kernel timestamp are skipped."""
    reader = _Reader()
    for line in lines:
        stamp = KERNEL_TIMESTAMP.search(line)
        if stamp is None:
            continue
        reader.read(float(stamp.group(1)), line[stamp.end():].strip(), line.strip())
    reader.boot.slowest_callbacks = sorted(reader.callbacks, key=lambda c: -c.usecs)[:SLOWEST_CALLBACKS]
    return reader.boot
