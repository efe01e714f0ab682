"""A swap area's first bytes read and written through QEMU's own tools (qemu-img, qemu-io), on whichever
host holds the disk: raw and qcow2 alike, the whole disk or a region of it (a partition, a swap file's
blocks), and QEMU's image locking keeps the lab from writing to a disk a VM has open."""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from lab.disk.lock import DiskBusy
from lab.errors import LabError, SetupError, UsageError, WaitTimeout
from lab.hosts.base import Host
from lab.hosts.local import LOCAL

SECTOR_SIZE = 512
"""What QEMU sizes disks in: a region's offset and a disk's size are whole sectors."""
_PAGE_SIZE = 4096
"""The smallest page a swap area is aligned to."""
_QEMU_TIMEOUT = 60.0
_LOCK_FAILURE = re.compile(r'Failed to get (?:shared )?"\w+" lock|Is another process using the image')


class DiskAccessError(LabError):
    """qemu-img or qemu-io could not read or write the disk for a reason other than a lock."""


@dataclass(frozen=True, kw_only=True)
class SwapRegion:
    """Where a swap area lies inside a disk: a partition, or a swap file's blocks in its filesystem.

    The whole disk is a swap area of its own (the busybox guests' swap disk): region None.
    """

    offset: int
    size: int

    def __post_init__(self) -> None:
        if self.offset % _PAGE_SIZE or self.offset < 0 or self.size <= 0:
            raise UsageError(f"a swap area at byte {self.offset} of {self.size} bytes is not page-aligned")


@dataclass(frozen=True)
class OpenedDisk:
    path: Path
    format: str
    size: int
    host: Host
    offset: int = 0
    """Where the swap area starts, in bytes from the start of the disk; `size` is the area's."""


def _run_qemu_tool(host: Host, args: list[str], disk: Path) -> str:
    """Run qemu-img/qemu-io on the disk's host; turn its failures into lab errors, a lock conflict into DiskBusy."""
    try:
        result = host.run(args, timeout=_QEMU_TIMEOUT)
    except SetupError:
        raise SetupError(f"{args[0]} not found; install QEMU's tools (Debian package qemu-utils)") from None
    except WaitTimeout as timeout:
        raise WaitTimeout(f"{args[0]} on {disk}", _QEMU_TIMEOUT) from timeout
    output = (result.stderr + result.stdout).decode(errors="replace")
    if result.returncode != 0:
        lock_failure = _LOCK_FAILURE.search(output)
        if lock_failure:
            reason = f"QEMU refused its image lock ({lock_failure.group(0)}): is a VM running on it?"
            raise DiskBusy(disk, reason)
        raise DiskAccessError(f"{args[0]} failed on {disk}: {result.last_error_line()}")
    return result.text()


def open_disk(disk: Path, host: Host, region: SwapRegion | None = None) -> OpenedDisk:
    """Find the disk's format and virtual size; -U so a disk a VM holds can still be inspected."""
    if host is LOCAL:
        if not disk.exists():
            raise UsageError(f"no such disk image: {disk}")
        disk = disk.resolve()
    info = json.loads(_run_qemu_tool(host, ["qemu-img", "info", "-U", "--output=json", str(disk)], disk))
    size = int(info["virtual-size"])
    if region is None:
        return OpenedDisk(disk, info["format"], size, host)
    if region.offset + region.size > size:
        raise UsageError(f"{disk}: a swap area at byte {region.offset} of {region.size} bytes ends past the "
                         f"disk's {size} bytes")
    return OpenedDisk(disk, info["format"], region.size, host, region.offset)


def _require_write_access(disk: OpenedDisk) -> None:
    """Open the disk read-write as the write will, and do nothing: QEMU's image locking refuses this
    (DiskBusy) while a VM holds the disk. `qemu-img dd` opens its input read-only, and a read-only
    open of a raw disk succeeds even while a VM writes to it."""
    _run_qemu_tool(disk.host, ["qemu-io", "-f", disk.format, "-c", "flush", str(disk.path)], disk.path)


def read_start(disk: OpenedDisk, span: int, for_update: bool) -> bytes:
    """The first `span` bytes as the guest sees them (the whole disk if smaller), copied out by `qemu-img dd`.

    For an update the disk must first open read-write, so a running VM makes the update fail (DiskBusy)
    before anything is changed; inspection shares the image (-U) and works while a VM holds it.
    """
    if for_update:
        _require_write_access(disk)
    length = min(span, disk.size)
    block = SECTOR_SIZE
    # qemu-img dd's count ends the copy at count blocks from the input's start, skipped ones included.
    share = [] if for_update else ["-U"]
    scratch = disk.host.make_dir("lab-header-")
    try:
        copy = posixpath.join(scratch, "start.raw")
        _run_qemu_tool(
            disk.host,
            ["qemu-img", "dd", *share, "-f", disk.format, "-O", "raw", f"bs={block}",
             f"count={(disk.offset + length) // block}", f"skip={disk.offset // block}", f"if={disk.path}",
             f"of={copy}"],
            disk.path,
        )
        data = disk.host.read_file(copy)
    finally:
        disk.host.remove_tree(scratch)
    if len(data) != length:
        raise DiskAccessError(f"qemu-img dd copied {len(data)} of {length} bytes from {disk.path}")
    return data


def write_start(disk: OpenedDisk, page: bytes) -> None:
    """Write the header page back with qemu-io (taking QEMU's write lock) from a pattern file.

    qemu-io splits its command on spaces, so the pattern file's path must have none: it is made in a
    fresh directory of the host's, whose names never do.
    """
    scratch = disk.host.make_dir("lab-header-")
    try:
        pattern = posixpath.join(scratch, "header-page.bin")
        disk.host.write_file(pattern, page)
        stdout = _run_qemu_tool(
            disk.host,
            ["qemu-io", "-f", disk.format, "-c", f"write -s {pattern} {disk.offset} {len(page)}", str(disk.path)],
            disk.path,
        )
    finally:
        disk.host.remove_tree(scratch)
    if f"wrote {len(page)}/{len(page)} bytes at offset {disk.offset}" not in stdout:
        raise DiskAccessError(f"qemu-io did not confirm writing the header of {disk.path}: {stdout.strip()}")
