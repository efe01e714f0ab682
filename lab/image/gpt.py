"""A system image's disk, written as a file without loop devices or mounts.

Each filesystem is made in a file of its own (`mkfs.ext4 -d` from a directory, `mkfs.vfat -C`,
`mkswap`), the GPT is written by `sfdisk` on the disk file, and the filesystems are copied in at
their partitions' offsets, holes kept. So a system image builds wherever these tools run, in a
container or a CI job without /dev/loop*. Partition and filesystem UUIDs derive from the image's
name, so a kernel command line naming them holds for every build of a recipe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from lab.errors import SetupError
from lab.lines import last_lines

MIB = 1 << 20
SECTOR = 512
BLOCK_SIZE = 4096
"""The root filesystem's block size: one page of the guests' kernels, so a swap file's first block
number is its `resume_offset` as the kernel counts it (in pages)."""
_TOOL_TIMEOUT = 600
_NAMESPACE = uuid.UUID("6d1c1e4e-3b43-4d6f-9a53-6c6162c0ffee")
_PACKAGES = {"sfdisk": "fdisk", "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "mkswap": "util-linux",
             "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools"}
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
SWAP_TYPE = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
ROOT_TYPES = {"arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "amd64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"}
"""The Discoverable Partitions Specification's root partition type for each architecture."""


def stable_uuid(image: str, what: str) -> str:
    """The UUID of one of an image's partitions or filesystems: the same for every build of the recipe."""
    return str(uuid.uuid5(_NAMESPACE, f"{image}/{what}"))


@dataclass(frozen=True, kw_only=True)
class Partition:
    """One GPT partition: its name (`lab-root`, …), type and unique GUIDs, and where it lies."""

    label: str
    type_guid: str
    uuid: str
    start_mib: int
    size_mib: int

    @property
    def offset(self) -> int:
        return self.start_mib * MIB

    @property
    def size(self) -> int:
        return self.size_mib * MIB

    def to_json(self) -> dict[str, str | int]:
        return {"label": self.label, "type": self.type_guid, "uuid": self.uuid, "offset": self.offset,
                "size": self.size}


def layout(image: str, arch: str, esp_mib: int, root_mib: int, swap_mib: int) -> tuple[Partition, ...]:
    """EFI system partition, root, swap: 1 MiB aligned, after the 1 MiB the GPT and its padding take."""
    wanted = (("lab-esp", ESP_TYPE, esp_mib), ("lab-root", ROOT_TYPES[arch], root_mib),
              ("lab-swap", SWAP_TYPE, swap_mib))
    partitions, start = [], 1
    for label, type_guid, size in wanted:
        partitions.append(Partition(label=label, type_guid=type_guid, uuid=stable_uuid(image, label),
                                    start_mib=start, size_mib=size))
        start += size
    return tuple(partitions)


def disk_size(partitions: tuple[Partition, ...]) -> int:
    """The disk's size: its partitions, and 1 MiB at the end for the backup GPT."""
    return (partitions[-1].start_mib + partitions[-1].size_mib + 1) * MIB


def run_tool(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run one of the disk tools; a missing tool or a failure is one line naming the tool (and its package)."""
    program = args[0]
    if shutil.which(program) is None:
        raise SetupError(f"{program} not found: install Debian's {_PACKAGES.get(program, program)} package "
                         "(./bootstrap --tests installs it)")
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=_TOOL_TIMEOUT,
                              env=None if env is None else os.environ | env)
    except subprocess.TimeoutExpired as error:
        raise SetupError(f"{program} took longer than {_TOOL_TIMEOUT}s") from error
    if done.returncode != 0:
        said = last_lines(done.stderr) or last_lines(done.stdout) or ["(no output)"]
        raise SetupError(f"{program} failed: {said[0]}")
    return done.stdout


def write_gpt(disk: Path, image: str, partitions: tuple[Partition, ...]) -> None:
    """A sparse disk file of the layout's size with its GPT written by sfdisk (no device needed)."""
    with disk.open("wb") as file:
        file.truncate(disk_size(partitions))
    lines = ["label: gpt", f"label-id: {stable_uuid(image, 'disk')}", "unit: sectors", ""]
    lines += [f"start={p.offset // SECTOR}, size={p.size // SECTOR}, type={p.type_guid}, uuid={p.uuid}, "
              f'name="{p.label}"' for p in partitions]
    run_tool("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk), stdin="\n".join(lines) + "\n")


def copy_into(source: Path, disk: Path, offset: int) -> None:
    """Copy a filesystem image into the disk at `offset`, only its data extents: holes stay holes."""
    size = source.stat().st_size
    with source.open("rb") as src, disk.open("r+b") as dst:
        position = 0
        while position < size:
            try:
                start = os.lseek(src.fileno(), position, os.SEEK_DATA)
            except OSError:
                return
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            src.seek(start)
            dst.seek(offset + start)
            remaining = end - start
            while remaining:
                chunk = src.read(min(remaining, 4 * MIB))
                dst.write(chunk)
                remaining -= len(chunk)
            position = end


def make_ext4(directory: Path, target: Path, size_mib: int, fs_uuid: str, label: str) -> None:
    """An ext4 filesystem holding `directory`'s tree, made in a file (`mkfs.ext4 -d`: no mount)."""
    with target.open("wb") as file:
        file.truncate(size_mib * MIB)
    run_tool("mkfs.ext4", "-q", "-F", "-b", str(BLOCK_SIZE), "-L", label, "-U", fs_uuid,
          "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", str(directory), str(target))


def make_swap_area(target: Path, size_mib: int, swap_uuid: str, label: str, filled: bool) -> None:
    """A swap area in a file. `filled` writes every page: a file that `mkfs.ext4 -d` copies into the
    root filesystem must hold no zero block, which it would leave as a hole, and swapon refuses holes."""
    with target.open("wb") as file:
        if filled:
            pattern = b"lab-swap" * (MIB // 8)
            for _ in range(size_mib):
                file.write(pattern)
        else:
            file.truncate(size_mib * MIB)
    target.chmod(0o600)
    run_tool("mkswap", "--quiet", "-U", swap_uuid, "-L", label, str(target))


def make_vfat(target: Path, size_mib: int, label: str) -> None:
    """An empty FAT filesystem in a file, ready for `mcopy` (the EFI system partition)."""
    target.unlink(missing_ok=True)
    run_tool("mkfs.vfat", "-C", "-n", label, str(target), str(size_mib * 1024))


def first_block(filesystem: Path, path: str) -> int:
    """The physical block of a file's first block in an ext4 image (debugfs `bmap`), read without a mount."""
    output = run_tool("debugfs", "-R", f"bmap {path} 0", str(filesystem)).strip()
    if not output.isdigit() or int(output) == 0:
        raise SetupError(f"debugfs found no first block for {path} in {filesystem.name}: {output!r}")
    return int(output)

