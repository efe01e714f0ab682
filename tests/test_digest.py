"""File digests are computed once per file identity, and never trusted for a file that changed."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from lab import digest


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The paths actually read and hashed; the cache is private and the racy window short."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(digest, "_remembered", {})
    monkeypatch.setattr(digest, "RACY_SECONDS", 0.0)
    calls: list[str] = []
    real_hash = digest._hash

    def counting(path: Path) -> str:
        calls.append(str(path))
        return real_hash(path)

    monkeypatch.setattr(digest, "_hash", counting)
    return calls


def settled(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    time.sleep(0.05)
    return path


def test_the_digest_is_the_files_sha256_computed_once(hashed: list[str], tmp_path: Path) -> None:
    file = settled(tmp_path / "f", b"kernel")
    assert digest.sha256_file(file) == hashlib.sha256(b"kernel").hexdigest()
    assert digest.sha256_file(tmp_path / "." / "f") == hashlib.sha256(b"kernel").hexdigest()
    assert len(hashed) == 1


def test_a_rewritten_file_is_hashed_again_even_with_its_old_size_and_mtime(hashed: list[str], tmp_path: Path) -> None:
    file = settled(tmp_path / "f", b"before")
    digest.sha256_file(file)
    stat = file.stat()
    file.write_bytes(b"after!")
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(0.05)
    assert digest.sha256_file(file) == hashlib.sha256(b"after!").hexdigest()
    assert len(hashed) == 2


def test_a_file_changed_just_now_is_not_remembered(hashed: list[str], monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(digest, "RACY_SECONDS", 60.0)
    file = tmp_path / "f"
    file.write_bytes(b"fresh")
    digest.sha256_file(file)
    digest.sha256_file(file)
    assert len(hashed) == 2


def test_large_files_are_remembered_across_processes(hashed: list[str], monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    large = settled(tmp_path / "large", bytes(digest.PERSIST_MIN_BYTES))
    small = settled(tmp_path / "small", b"small")
    first = digest.sha256_file(large), digest.sha256_file(small)
    monkeypatch.setattr(digest, "_remembered", {})
    assert (digest.sha256_file(large), digest.sha256_file(small)) == first
    assert hashed == [str(large), str(small), str(small)]


def test_an_unusable_cache_only_costs_a_hash(hashed: list[str], monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "digests.sqlite3").write_text("not a database")
    large = settled(tmp_path / "large", bytes(digest.PERSIST_MIN_BYTES))
    assert digest.sha256_file(large) == hashlib.sha256(bytes(digest.PERSIST_MIN_BYTES)).hexdigest()
