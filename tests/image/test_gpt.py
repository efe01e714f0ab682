"""A system disk written without loop devices: real sfdisk, mkfs.ext4 -d, mkswap and debugfs on files,
and the hibernation header found inside a partition and inside a swap file, through QEMU's tools."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from lab.disk.header import read_header, set_signature
from lab.disk.qemu_tools import SwapRegion
from lab.errors import UsageError
from lab.image import gpt

IMAGE = "test-system"


def _hibernate_at(disk: Path, offset: int) -> None:
    """Write the tail the kernel writes over a 4 KiB swap page when it saves an image there."""
    tail = struct.pack("<IIQI10s10s", 0, 0x1234, 1, 0, b"SWAPSPACE2", b"S1SUSPEND")
    with disk.open("r+b") as file:
        file.seek(offset + 0xFD8)
        file.write(tail)


@pytest.fixture(scope="module")
def system_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[gpt.Partition, ...], int]:
    """A small system disk: an empty ESP, an ext4 root with a filled swap file, a swap partition;
    returns the disk, its partitions and the swap file's first block."""
    work = tmp_path_factory.mktemp("gpt")
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("lab-system\n")
    gpt.make_swap_area(root / "swapfile", 64, gpt.stable_uuid(IMAGE, "swap-file"), "lab-swapfile", filled=True)
    gpt.make_ext4(root, work / "root.ext4", 256, gpt.stable_uuid(IMAGE, "root-fs"), "lab-root")
    block = gpt.first_block(work / "root.ext4", "/swapfile")
    gpt.make_vfat(work / "esp.vfat", 40, "LAB-ESP")
    gpt.make_swap_area(work / "swap", 64, gpt.stable_uuid(IMAGE, "swap"), "lab-swap", filled=False)
    partitions = gpt.layout(IMAGE, "arm64", 40, 256, 64)
    disk = work / "disk.raw"
    gpt.write_gpt(disk, IMAGE, partitions)
    for partition, name in zip(partitions, ("esp.vfat", "root.ext4", "swap"), strict=True):
        gpt.copy_into(work / name, disk, partition.offset)
    return disk, partitions, block


def test_the_gpt_is_what_sfdisk_reads_back(system_disk: tuple[Path, tuple[gpt.Partition, ...], int]) -> None:
    disk, partitions, _ = system_disk
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True, timeout=30).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    assert table["id"].lower() == gpt.stable_uuid(IMAGE, "disk")
    found = [(p["name"], p["type"].upper(), p["uuid"].lower(), p["start"] * 512, p["size"] * 512)
             for p in table["partitions"]]
    assert found == [(p.label, p.type_guid, p.uuid, p.offset, p.size) for p in partitions]


def test_the_copy_keeps_holes(system_disk: tuple[Path, tuple[gpt.Partition, ...], int]) -> None:
    disk, _, _ = system_disk
    allocated = disk.stat().st_blocks * 512
    assert allocated < disk.stat().st_size / 2, "the disk's empty space was written out"


def test_a_swap_partition_is_read_in_its_region(system_disk: tuple[Path, tuple[gpt.Partition, ...], int]) -> None:
    disk, partitions, _ = system_disk
    swap = partitions[2]
    header = read_header(disk, region=SwapRegion(offset=swap.offset, size=swap.size))
    assert (header.signature, header.disk_size) == ("SWAPSPACE2", swap.size)
    assert header.swap is not None and header.swap.uuid == gpt.stable_uuid(IMAGE, "swap")
    with pytest.raises(Exception, match="no swap or hibernation signature"):
        read_header(disk)


def test_the_swap_file_header_sits_at_its_first_block(
        system_disk: tuple[Path, tuple[gpt.Partition, ...], int], tmp_path: Path) -> None:
    """resume_offset counts pages from the start of the partition: the first block of a 4 KiB-block ext4."""
    disk, partitions, block = system_disk
    root = partitions[1]
    region = SwapRegion(offset=root.offset + block * gpt.BLOCK_SIZE, size=64 * gpt.MIB)
    header = read_header(disk, region=region)
    assert header.signature == "SWAPSPACE2"
    assert header.swap is not None and header.swap.label == "lab-swapfile"


def test_a_signature_is_set_inside_the_region_only(
        system_disk: tuple[Path, tuple[gpt.Partition, ...], int], tmp_path: Path) -> None:
    source, partitions, _ = system_disk
    disk = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(source), str(disk)], check=True, timeout=60)
    swap = partitions[2]
    region = SwapRegion(offset=swap.offset, size=swap.size)
    _hibernate_at(disk, swap.offset)
    before_esp = disk.read_bytes()[: swap.offset]
    _, after = set_signature(disk, 0x4C414221, region=region)
    assert (after.signature, after.hw_sig, after.flag_names) == ("S1SUSPEND", 0x4C414221, ("HW_SIG",))
    assert disk.read_bytes()[: swap.offset] == before_esp


def test_a_region_past_the_disk_is_refused(system_disk: tuple[Path, tuple[gpt.Partition, ...], int]) -> None:
    disk, _, _ = system_disk
    with pytest.raises(UsageError, match="ends past the disk"):
        read_header(disk, region=SwapRegion(offset=disk.stat().st_size, size=gpt.MIB))
    with pytest.raises(UsageError, match="not page-aligned"):
        SwapRegion(offset=100, size=gpt.MIB)
