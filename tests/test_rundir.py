"""The run directory keeps room for its results on a filesystem that fills up (a real, tiny tmpfs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab.rundir import ROOM_BYTES, S4_RENAMED, RunDirectory


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


RECORDED_RESULT = Path(__file__).parent / "report" / "data" / "run-no-stale-resume" / "result.json"


@pytest.mark.parametrize(("qemu", "read_class"), [("/usr/bin/qemu-system-x86_64", "hibernate-s4"),
                                                   ("/usr/bin/qemu-system-aarch64", "hibernate-off2")])
def test_a_version_2_result_reads_as_version_3(tmp_path, qemu, read_class):
    """Version 2 classed an x86 guest's ACPI S4 `hibernate-off2`; read today, it is `hibernate-s4`, noted."""
    result = json.loads(RECORDED_RESULT.read_text())
    assert result["schema_version"] == 2
    result["environment"]["qemu_build"]["path"] = qemu
    result["verdict"]["power_offs"][0]["class"] = "hibernate-off2"
    (tmp_path / "result.json").write_text(json.dumps(result))
    read = RunDirectory(tmp_path).read_result()
    assert read is not None and (read["schema_version"], read["upgraded_from"]) == (3, 2)
    first = read["verdict"]["power_offs"][0]
    assert first["class"] == read_class
    assert (S4_RENAMED in first["notes"]) == (read_class == "hibernate-s4")
