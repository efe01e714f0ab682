"""The lab's own advisory lock on a guest disk.

QEMU locks an image only while it has it open; the lab also needs to keep a disk for itself
across a whole VM run (launch, hibernate, resume) and while it edits the disk offline, so that
two lab commands never work on the same disk at once. The lock is `flock` on a sibling file
`<disk>.lab-lock`, which the kernel drops by itself when the holder dies: no stale locks. The holder
removes the file as it lets go, so a run directory keeps no lock files; a taker that locked a file its
holder had just removed takes the new one instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from types import TracebackType

from lab.errors import LabError

LOCK_SUFFIX = ".lab-lock"


class DiskBusy(LabError):
    """A disk is in use by a running VM or another lab command; editing it now could corrupt it."""

    def __init__(self, disk: Path, holder: str) -> None:
        self.disk = disk
        self.holder = holder
        super().__init__(f"disk {disk} is in use: {holder}")


def lock_path_for(disk: Path) -> Path:
    """The sibling file whose flock stands for the disk's lab lock.

    Resolved first, so every name for the same disk (relative, via a symlink) finds one lock.
    """
    real = disk.resolve()
    return real.with_name(real.name + LOCK_SUFFIX)


def _holder_text(lock_path: Path) -> str:
    """Say who holds the lock, from what the holder recorded in the lock file (if readable)."""
    try:
        record = json.loads(lock_path.read_text())
        pid = int(record["pid"])
        description = str(record.get("description", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return f"lab lock {lock_path} is held by another process"
    suffix = f" ({description})" if description else ""
    return f"lab lock {lock_path} is held by pid {pid}{suffix}"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_still_at(fd: int, path: Path) -> bool:
    """Whether the locked file is still the one at `path` (its last holder may have removed it meanwhile)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


class DiskLock:
    """Hold the lab lock on `disk`; raises DiskBusy at once instead of waiting when it is taken.

    Usable as a context manager or through acquire()/release() for a holder whose lifetime
    is not one block (the machine launcher keeps it for as long as its VM runs).
    """

    def __init__(self, disk: Path, description: str = "") -> None:
        self.disk = disk
        self.lock_path = lock_path_for(disk)
        self.description = description
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.lock_path} is already held by this DiskLock")
        while True:
            # No O_TRUNC: the file may hold the current holder's record, which a refused caller reports.
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if not _try_flock(fd):
                os.close(fd)
                raise DiskBusy(self.disk, _holder_text(self.lock_path))
            if _is_still_at(fd, self.lock_path):
                break
            os.close(fd)
        record = json.dumps({"pid": os.getpid(), "description": self.description})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> DiskLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def holder(disk: Path) -> str | None:
    """Who holds the disk's lab lock (as DiskBusy says it), or None when no one does. Creates no lock file."""
    return _holder_text(lock_path_for(disk)) if is_held(disk) else None


def is_held(disk: Path) -> bool:
    """Whether anyone (this process included, through another DiskLock) holds the disk's lab lock.

    Creates no lock file: a disk the lab never locked has none and is not held.
    """
    try:
        fd = os.open(lock_path_for(disk), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if not _try_flock(fd):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
