"""Deterministic newc cpio archives: the guest's initramfs.

Written here rather than shelling out to cpio so that the same inputs always give the
same bytes (fixed mtimes, inode numbers and ordering), which keeps image digests stable.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file, a symlink or a device node."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def regular_file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(out: BinaryIO, written: int) -> None:
    out.write(b"\0" * (-written % 4))


def _write_member(out: BinaryIO, ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]) -> None:
    encoded_name = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded_name), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    out.write(header + encoded_name)
    _pad4(out, len(header) + len(encoded_name))
    out.write(data)
    _pad4(out, len(data))


def write_newc(out: BinaryIO, entries: Iterable[Entry]) -> None:
    """Write entries, in the given order (parents first), followed by the trailer."""
    ino = 0
    for ino, entry in enumerate(entries, start=1):
        _write_member(out, ino, entry.path.lstrip("/"), entry.mode, entry.data, entry.rdev)
    _write_member(out, ino + 1, "TRAILER!!!", 0, b"", (0, 0))


def write_newc_file(path: Path, entries: Iterable[Entry]) -> None:
    with path.open("wb") as out:
        write_newc(out, entries)
