"""Deterministic newc cpio archives: the guest's initramfs.

Written here rather than shelling out to cpio so that the same inputs always give the
same bytes (fixed mtimes, inode numbers and ordering), which keeps image digests stable.
"""

from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file, a symlink, a device node, or a hard link."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    link: str | None = None
    """For a hard link: the path of the regular file (earlier in the archive) it is another name of."""


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def regular_file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def hard_link(path: str, target: Entry) -> Entry:
    """Another name for the regular file `target`: one copy of the data in the archive and in RAM."""
    return Entry(path, target.mode, link=target.path)


def parent_directories(paths: Iterable[str], known: Iterable[str]) -> list[str]:
    """Directories an archive still lacks for `paths`, parents first."""
    wanted = {str(parent) for path in paths for parent in Path(path).parents if str(parent) != "."}
    return sorted(wanted - set(known), key=lambda d: (d.count("/"), d))


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(out: BinaryIO, written: int) -> None:
    out.write(b"\0" * (-written % 4))


def _write_member(out: BinaryIO, ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int],
                  nlink: int = 1) -> None:
    encoded_name = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded_name), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    out.write(header + encoded_name)
    _pad4(out, len(header) + len(encoded_name))
    out.write(data)
    _pad4(out, len(data))


def write_newc(out: BinaryIO, entries: Iterable[Entry]) -> None:
    """Write entries, in the given order (parents first), followed by the trailer.

    A hard link shares its target's inode number and link count and carries no data, as the
    kernel's unpacker expects: it links the later names to the first one it met.
    """
    entries = list(entries)
    names = Counter(entry.link for entry in entries if entry.link is not None)
    inodes: dict[str, int] = {}
    ino = 0
    for ino, entry in enumerate(entries, start=1):
        if entry.link is not None:
            if entry.link not in inodes:
                raise ValueError(f"{entry.path} links to {entry.link}, which is not earlier in the archive")
            _write_member(out, inodes[entry.link], entry.path.lstrip("/"), entry.mode, b"", entry.rdev,
                          names[entry.link] + 1)
            continue
        if stat.S_ISREG(entry.mode):
            inodes[entry.path] = ino
        nlink = 2 if stat.S_ISDIR(entry.mode) else names[entry.path] + 1
        _write_member(out, ino, entry.path.lstrip("/"), entry.mode, entry.data, entry.rdev, nlink)
    _write_member(out, ino + 1, "TRAILER!!!", 0, b"", (0, 0))


def write_newc_file(path: Path, entries: Iterable[Entry]) -> None:
    with path.open("wb") as out:
        write_newc(out, entries)
