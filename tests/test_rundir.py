"""The run directory keeps room for its results on a filesystem that fills up (a real, tiny tmpfs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.rundir import ROOM_BYTES, RunDirectory


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "lab-test", str(mount)]).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_the_room_kept_at_the_start_takes_the_results_once_the_disk_is_full(tiny_fs):
    run_dir = RunDirectory(tiny_fs / "run")
    run_dir.path.mkdir()
    run_dir.keep_room()
    assert run_dir.room.stat().st_blocks * 512 >= ROOM_BYTES
    with pytest.raises(OSError), (run_dir.path / "swap.raw").open("wb") as disk:
        while True:
            disk.write(b"\0" * 65536)
            disk.flush()
    run_dir.free_room()
    run_dir.result.write_text("x" * (ROOM_BYTES // 2))
    assert run_dir.result.stat().st_size == ROOM_BYTES // 2
