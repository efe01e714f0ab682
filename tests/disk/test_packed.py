"""The system disk packed for lab hosts, and an overlay of it brought home, with QEMU's real tools."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lab.digest import sha256_file
from lab.disk.packed import packed_disk, rebase_home
from lab.errors import SetupError


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture
def raw_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 16 MiB raw disk with data at its start and in its middle, the rest holes; the lab's cache in tmp_path."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as stream:
        stream.write(os.urandom(1 << 20))
        stream.seek(8 << 20)
        stream.write(b"middle of the disk" * 1000)
        stream.truncate(16 << 20)
    return disk


def test_the_packed_disk_is_a_compressed_qcow2_with_the_same_content_and_is_made_once(raw_disk: Path) -> None:
    packed = packed_disk(raw_disk, sha256_file(raw_disk))
    info = json.loads(qemu_img("info", "--output=json", str(packed)))
    assert info["format"] == "qcow2" and info["format-specific"]["data"]["compression-type"] == "zstd"
    assert info["virtual-size"] == raw_disk.stat().st_size
    qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw_disk), str(packed))
    made = packed.stat().st_mtime_ns
    assert packed_disk(raw_disk, sha256_file(raw_disk)) == packed and packed.stat().st_mtime_ns == made
    assert [path.name for path in packed.parent.iterdir()] == [packed.name], "no partial file is left"


def test_an_overlay_of_the_packed_disk_reads_the_same_once_rebased_onto_the_raw_disk(raw_disk: Path,
                                                                                     tmp_path: Path) -> None:
    packed = packed_disk(raw_disk, sha256_file(raw_disk))
    overlay = tmp_path / "swap.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", str(packed), str(overlay))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 4096 4096", str(overlay)], check=True,
                   capture_output=True, timeout=60)
    expected = tmp_path / "expected.raw"
    qemu_img("convert", "-O", "raw", str(overlay), str(expected))
    packed.unlink()
    rebase_home(overlay, raw_disk)
    info = json.loads(qemu_img("info", "--output=json", str(overlay)))
    assert info["backing-filename"] == str(raw_disk.resolve()) and info["backing-filename-format"] == "raw"
    qemu_img("compare", "-f", "raw", "-F", "qcow2", str(expected), str(overlay))


def test_a_disk_that_cannot_be_packed_is_one_line_and_leaves_nothing(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SetupError, match=r"^cannot pack .*missing\.raw for a lab host: qemu-img convert: ") as error:
        packed_disk(tmp_path / "missing.raw", "0" * 64)
    assert "\n" not in str(error.value)
    assert list((tmp_path / "cache" / "packed-disks").iterdir()) == []
