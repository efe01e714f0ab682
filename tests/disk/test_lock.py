"""The lab's disk lock, exercised with real flock between open file descriptions and processes."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab.disk.lock import DiskBusy, DiskLock, is_held, lock_path_for
from lab.errors import LabError

REPO_ROOT = Path(__file__).resolve().parents[2]

HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lab.disk.lock import DiskLock

    with DiskLock(Path(sys.argv[1]), "holder in a subprocess"):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


@contextmanager
def lock_held_by_subprocess(disk: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the lab lock until the block ends (its stdin closes)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(disk)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "guest.qcow2"
    path.write_bytes(b"")
    return path


def test_lock_records_its_holder_and_release_removes_the_file(disk: Path) -> None:
    with DiskLock(disk, "lab machine demo") as lock:
        assert lock.held
        assert lock.lock_path == disk.with_name("guest.qcow2.lab-lock")
        record = json.loads(lock.lock_path.read_text())
        assert record == {"pid": os.getpid(), "description": "lab machine demo"}
        assert is_held(disk)
    assert not lock.held
    assert not lock.lock_path.exists(), "a run directory keeps no swap.raw.lab-lock"
    assert not is_held(disk)


def test_second_lock_in_the_same_process_is_refused_naming_the_holder(disk: Path) -> None:
    with DiskLock(disk, "first"), pytest.raises(DiskBusy) as refusal:
        DiskLock(disk, "second").acquire()
    message = str(refusal.value)
    assert str(lock_path_for(disk)) in message
    assert f"pid {os.getpid()}" in message
    assert "(first)" in message
    assert refusal.value.disk == disk
    assert isinstance(refusal.value, LabError)
    assert refusal.value.exit_code == 2


def test_lock_held_by_another_process_is_refused_with_its_pid(disk: Path) -> None:
    with lock_held_by_subprocess(disk) as holder:
        assert is_held(disk)
        with pytest.raises(DiskBusy, match=rf"pid {holder.pid} \(holder in a subprocess\)"):
            DiskLock(disk).acquire()
    assert not is_held(disk)
    with DiskLock(disk):
        pass


def test_lock_dies_with_its_holder(disk: Path) -> None:
    with lock_held_by_subprocess(disk) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert not is_held(disk)
        with DiskLock(disk, "after the crash") as lock:
            assert json.loads(lock.lock_path.read_text())["description"] == "after the crash"


def test_unreadable_holder_record_still_gives_a_clear_refusal(disk: Path) -> None:
    fd = os.open(lock_path_for(disk), os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"not json")
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(DiskBusy, match="is held by another process"):
            DiskLock(disk).acquire()
    finally:
        os.close(fd)


def test_lock_is_released_when_the_block_raises(disk: Path) -> None:
    with pytest.raises(ValueError), DiskLock(disk):
        raise ValueError("boom")
    assert not is_held(disk)


def test_acquiring_twice_through_one_lock_is_a_programming_error(disk: Path) -> None:
    with DiskLock(disk) as lock, pytest.raises(RuntimeError):
        lock.acquire()


def test_probe_creates_no_lock_file(disk: Path) -> None:
    assert not is_held(disk)
    assert not lock_path_for(disk).exists()


def test_every_name_of_a_disk_finds_the_same_lock(disk: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias.qcow2"
    alias.symlink_to(disk)
    with DiskLock(alias):
        assert lock_path_for(alias) == lock_path_for(disk)
        with pytest.raises(DiskBusy):
            DiskLock(disk).acquire()


TAKERS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from lab.disk.lock import DiskBusy, DiskLock

    disk, inside = Path(sys.argv[1]), Path(sys.argv[2])
    taken = 0
    for _ in range(3000):
        try:
            with DiskLock(disk, "taker"):
                fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                os.unlink(inside)
                taken += 1
        except DiskBusy:
            pass
    print(taken)
    """
)


def test_takers_racing_a_holder_that_removes_the_file_never_hold_it_together(disk: Path, tmp_path: Path) -> None:
    """Six processes take and let go 3000 times each; inside the lock each creates a file that must not
    exist (O_EXCL), which fails should two ever hold the lock at once (a taker on a removed file: without
    the re-check this failed within 10 s here)."""
    inside = tmp_path / "inside"
    takers = [subprocess.Popen([sys.executable, "-c", TAKERS_SCRIPT, str(disk), str(inside)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        outcomes = [taker.communicate(timeout=120) for taker in takers]
    finally:
        for taker in takers:
            if taker.poll() is None:
                taker.kill()
                taker.wait(10)
    assert [taker.returncode for taker in takers] == [0] * 6, [err for _, err in outcomes]
    assert sum(int(out) for out, _ in outcomes) > 0
    assert not lock_path_for(disk).exists()
