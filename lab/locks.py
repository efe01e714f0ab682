"""Waiting locks shared across lab processes (test workers, matrix cells, two `lab` commands): one flock helper."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def held_lock(lock_file: Path) -> Iterator[None]:
    """An exclusive flock on `lock_file` (made with its directory if need be), across processes, while in the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
