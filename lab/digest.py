"""The sha256 of a file, computed once: remembered by path and file identity, in-process and in the cache.

A run, a build and a lab host's file cache all want the digests of the same large files (the kernel,
the initramfs, debs, disks); hashing the 38 MB kernel takes a noticeable part of a second each time.
A digest is reused only while the file's identity is unchanged: device, inode, size, mtime and ctime
(which no user can set). It is remembered only once the file's timestamps are older than the
filesystem's timestamp granularity can hide a rewrite ("racily clean" files are hashed every time),
and it is kept in the cache only for large files, which cost more to hash than to look up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from pathlib import Path

from lab.paths import cache_root

PERSIST_MIN_BYTES = 1 << 20
"""Smaller files hash faster than a lookup in the digest table costs."""
RACY_SECONDS = 2.0
"""A file changed this recently may change again without its timestamps showing it (coarse clocks)."""
_BLOCK = 1 << 20
_TABLE = "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, identity TEXT NOT NULL, sha256 TEXT NOT NULL)"

_remembered: dict[str, tuple[str, str]] = {}


def _identity(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def _table() -> Path:
    return cache_root() / "digests.sqlite3"


def _stored(path: str, identity: str) -> str | None:
    """The cached digest of `path` if its identity still matches; None when absent or unreadable."""
    table = _table()
    if not table.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(table, timeout=5)) as db:
            row = db.execute("SELECT identity, sha256 FROM digests WHERE path = ?", (path,)).fetchone()
    except sqlite3.Error:
        return None
    return row[1] if row is not None and row[0] == identity else None


def _store(path: str, identity: str, sha256: str) -> None:
    """Best effort: a read-only or damaged cache only means hashing again next time."""
    table = _table()
    with contextlib.suppress(sqlite3.Error, OSError):
        table.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(table, timeout=5)) as db, db:
            db.execute(_TABLE)
            db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (path, identity, sha256))


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at `path`, from memory or the cache when the file is unchanged."""
    real = os.path.realpath(path)
    started = time.time()
    stat = os.stat(real)
    identity = _identity(stat)
    known = _remembered.get(real)
    if known is not None and known[0] == identity:
        return known[1]
    persist = stat.st_size >= PERSIST_MIN_BYTES
    sha256 = _stored(real, identity) if persist else None
    if sha256 is None:
        sha256 = _hash(Path(real))
        settled = max(stat.st_mtime_ns, stat.st_ctime_ns) / 1e9 < started - RACY_SECONDS
        if not settled or _identity(os.stat(real)) != identity:
            return sha256
        if persist:
            _store(real, identity, sha256)
    _remembered[real] = (identity, sha256)
    return sha256
