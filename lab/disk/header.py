"""Read and edit the hibernation image header at the start of a guest's swap disk.

The header is the page Linux writes over the swap signature when it hibernates
(kernel/power/swap.c). Editing it from the host is how the lab makes a hibernated guest
cold-boot on purpose: with HW_SIG set and a hardware signature the resuming kernel does not
expect, the kernel refuses the image and boots cleanly. Every disk access goes through QEMU's
own tools (lab.disk.qemu_tools: qemu-img, qemu-io), so raw and qcow2 work alike and QEMU's image locking keeps
the lab from writing to a disk a VM has open; the lab's own DiskLock covers the rest.
"""

from __future__ import annotations

import enum
import re
import struct
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.disk.lock import DiskLock
from lab.disk.qemu_tools import OpenedDisk, SwapRegion, open_disk, read_start, write_start
from lab.errors import LabError, UsageError
from lab.hosts.base import Host
from lab.hosts.local import LOCAL

PAGE_SIZES = (4096, 65536)
HEADER_SPAN = max(PAGE_SIZES)
IMAGE_SIGNATURE = "S1SUSPEND"
SWAP_SIGNATURES = ("SWAPSPACE2", "SWAP-SPACE")
U32_MAX = 0xFFFF_FFFF


class ImageFlag(enum.IntFlag):
    """The header's flags: the kernel's SF_* bits (kernel/power/swap.c); bits it may add later are kept."""

    PLATFORM_MODE = 1
    NOCOMPRESS = 2
    CRC32 = 4
    HW_SIG = 8
    LZ4 = 16


_KNOWN_FLAGS = sum(ImageFlag)

# The header's tail, at the end of the first page: hw_sig, crc32, image, flags, orig_sig, sig.
_TAIL = struct.Struct("<IIQI10s10s")
_HW_SIG_AT = 0
_FLAGS_AT = 16
_ORIG_SIG_AT = 20
_SIG_AT = 30
# mkswap's version-1 block: version, last_page, nr_badpages, uuid, volume label.
_SWAP_INFO = struct.Struct("<III16s16s")
_SWAP_INFO_OFFSET = 0x400



class HeaderError(LabError):
    """The disk holds no recognisable swap or hibernation header, or one that is inconsistent."""


class NoImageError(LabError):
    """The disk holds a plain swap area: there is no hibernation image to edit."""


@dataclass(frozen=True)
class SwapInfo:
    """The version-1 swap header mkswap writes at 0x400; last_page says how big the area is."""

    version: int
    last_page: int
    bad_pages: int
    uuid: str
    label: str


@dataclass(frozen=True)
class HibernationHeader:
    """The first page of a swap disk as the kernel sees it, plus the disk's size for sanity checks.

    When no image is present, flags/hw_sig/image_offset/crc32 are whatever an earlier
    hibernation left behind (or zero after mkswap); the kernel ignores them then.
    """

    page_size: int
    signature: str
    original_signature: str
    flags: ImageFlag
    hw_sig: int
    image_offset: int
    crc32: int
    disk_size: int
    swap: SwapInfo | None

    @property
    def image_present(self) -> bool:
        return self.signature == IMAGE_SIGNATURE

    @property
    def flag_names(self) -> tuple[str, ...]:
        names = [flag.name or "" for flag in ImageFlag if flag in self.flags]
        unknown = self.flags & ~_KNOWN_FLAGS
        names += [f"0x{1 << bit:x}" for bit in range(32) if unknown & (1 << bit)]
        return tuple(names)

    @property
    def swap_pages(self) -> int:
        """Pages the image may live in: the smaller of what mkswap recorded and what the disk holds."""
        disk_pages = self.disk_size // self.page_size
        return min(disk_pages, self.swap.last_page + 1) if self.swap else disk_pages

    @property
    def signature_problems(self) -> tuple[str, ...]:
        """Why the signature the kernel would restore on resume cannot be trusted."""
        if not self.image_present or self.original_signature in SWAP_SIGNATURES:
            return ()
        expected = " or ".join(SWAP_SIGNATURES)
        return (f"original signature {self.original_signature!r} is not a swap signature ({expected})",)

    @property
    def offset_problems(self) -> tuple[str, ...]:
        """Why the image offset cannot point at an image the kernel could load."""
        if not self.image_present:
            return ()
        if self.image_offset == 0:
            return ("image offset 0 points at the header page itself",)
        if self.image_offset >= self.swap_pages:
            return (f"image offset {self.image_offset} is beyond the swap area's {self.swap_pages} pages",)
        return ()

    @property
    def problems(self) -> tuple[str, ...]:
        """Why an image-present header cannot be trusted; empty when it looks sound."""
        return self.signature_problems + self.offset_problems

    def to_json(self) -> dict[str, Any]:
        return {
            "page_size": self.page_size,
            "signature": self.signature,
            "original_signature": self.original_signature,
            "image_present": self.image_present,
            "flags": int(self.flags),
            "flag_names": list(self.flag_names),
            "hw_sig": self.hw_sig,
            "image_offset": self.image_offset,
            "crc32": self.crc32,
            "disk_size": self.disk_size,
            "swap": None
            if self.swap is None
            else {
                "version": self.swap.version,
                "last_page": self.swap.last_page,
                "bad_pages": self.swap.bad_pages,
                "uuid": self.swap.uuid,
                "label": self.swap.label,
            },
            "problems": list(self.problems),
        }

    def describe(self) -> str:
        state = "hibernation image present" if self.image_present else "no hibernation image"
        flag_text = " ".join(self.flag_names) or "none"
        rows = [
            ("page size", f"{self.page_size} bytes ({self.page_size // 1024} KiB pages)"),
            ("signature", f"{self.signature} ({state})"),
            ("orig. signature", self.original_signature or "(empty)"),
            ("flags", f"0x{self.flags:08x} {flag_text}"),
            ("hw_sig", f"0x{self.hw_sig:08x}"),
            ("image offset", f"page {self.image_offset} (byte 0x{self.image_offset * self.page_size:x})"),
            ("crc32", f"0x{self.crc32:08x}"),
            ("disk size", f"{_mebibytes(self.disk_size)} ({self.disk_size} bytes)"),
        ]
        if self.swap is not None:
            swap_bytes = (self.swap.last_page + 1) * self.page_size
            rows += [
                ("swap header", f"version {self.swap.version}, last page {self.swap.last_page} "
                 f"({_mebibytes(swap_bytes)} of swap), {self.swap.bad_pages} bad pages"),
                ("swap uuid", self.swap.uuid),
                ("swap label", self.swap.label or "(none)"),
            ]
        if not self.image_present:
            rows.append(("note", "flags, hw_sig, image offset and crc32 are unused without an image"))
        rows += [("problem", problem) for problem in self.problems]
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _mebibytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _signature_text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("ascii", errors="backslashreplace")


def _has_known_signature(data: bytes, page_size: int) -> bool:
    signature = _signature_text(data[page_size - 10 : page_size])
    return len(data) >= page_size and signature in (IMAGE_SIGNATURE, *SWAP_SIGNATURES)


def _swap_info(page: bytes, swap_signature: str) -> SwapInfo | None:
    if swap_signature != "SWAPSPACE2":
        return None
    version, last_page, bad_pages, raw_uuid, raw_label = _SWAP_INFO.unpack_from(page, _SWAP_INFO_OFFSET)
    if version != 1:
        return None
    label = raw_label.split(b"\0", 1)[0].decode("utf-8", errors="backslashreplace")
    return SwapInfo(version, last_page, bad_pages, str(uuid.UUID(bytes=raw_uuid)), label)


def parse_header(data: bytes, disk_size: int, source: str) -> HibernationHeader:
    """Decode the header from the start of a disk; `source` names the disk in errors.

    The page size is where a known signature sits: 0xFF6 (4 KiB pages) is tried first,
    since a 64 KiB-page mkswap zeroes that spot.
    """
    page_size = next((size for size in PAGE_SIZES if _has_known_signature(data, size)), None)
    if page_size is None:
        found = " and ".join(
            repr(_signature_text(data[size - 10 : size])) for size in PAGE_SIZES if len(data) >= size
        )
        raise HeaderError(
            f"{source}: no swap or hibernation signature at 0xFF6/0xFFF6 (4/64 KiB pages); found {found}"
        )
    page = data[:page_size]
    hw_sig, crc32, image_offset, flags, raw_orig, raw_sig = _TAIL.unpack_from(page, page_size - _TAIL.size)
    signature = _signature_text(raw_sig)
    original = _signature_text(raw_orig)
    return HibernationHeader(
        page_size=page_size,
        signature=signature,
        original_signature=original,
        flags=ImageFlag(flags),
        hw_sig=hw_sig,
        image_offset=image_offset,
        crc32=crc32,
        disk_size=disk_size,
        swap=_swap_info(page, original if signature == IMAGE_SIGNATURE else signature),
    )


def parse_signature_value(text: str) -> int:
    """A hardware signature from the command line: decimal or 0x-hex, within u32."""
    cleaned = text.strip()
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", cleaned):
            value = int(cleaned, 16)
        elif re.fullmatch(r"[0-9]+", cleaned):
            value = int(cleaned, 10)
        else:
            raise ValueError(cleaned)
    except ValueError:
        raise UsageError(f"signature value {text!r} is not a decimal or 0x-hex number") from None
    _require_u32(value)
    return value


def _require_u32(value: int) -> None:
    if not 0 <= value <= U32_MAX:
        raise UsageError(f"signature value {value} is outside 0..0x{U32_MAX:X} (hw_sig is a u32)")


def _read_start(disk: OpenedDisk, for_update: bool) -> bytes:
    if disk.size < min(PAGE_SIZES):
        raise HeaderError(f"{disk.path}: {disk.size} bytes is too small to hold a swap header")
    return read_start(disk, HEADER_SPAN, for_update)


def read_header(disk: Path, host: Host = LOCAL, region: SwapRegion | None = None) -> HibernationHeader:
    """Inspect a swap area's header (the whole disk's, or a region's) without locking the disk, so a
    disk in use can be looked at too."""
    opened = open_disk(disk, host, region)
    return parse_header(_read_start(opened, for_update=False), opened.size, str(disk))


def _edit_image_header(
    disk: Path,
    action: str,
    edit: Callable[[HibernationHeader, bytearray], None],
    blocking_problems: Callable[[HibernationHeader], tuple[str, ...]],
    host: Host,
    region: SwapRegion | None,
) -> tuple[HibernationHeader, HibernationHeader]:
    """Read-modify-write the header page under both locks; returns the header before and after.

    The lab lock is held throughout (on this machine; a run's disk on a lab host lives in that run's
    own directory there), so no lab VM can start between the read and the write; the read and the
    write both open the disk read-write, so QEMU refuses them while a VM has it.
    """
    opened = open_disk(disk, host, region)
    lock = DiskLock(opened.path, description=f"lab image: {action}") if host is LOCAL else nullcontext()
    with lock:
        data = _read_start(opened, for_update=True)
        before = parse_header(data, opened.size, str(disk))
        if not before.image_present:
            raise NoImageError(
                f"{disk}: no hibernation image (signature {before.signature}, not {IMAGE_SIGNATURE}); "
                f"refusing to {action}"
            )
        problems = blocking_problems(before)
        if problems:
            raise HeaderError(
                f"{disk}: hibernation header looks corrupt ({'; '.join(problems)}); refusing to {action}"
            )
        page = bytearray(data[: before.page_size])
        edit(before, page)
        write_start(opened, bytes(page))
        after = parse_header(_read_start(opened, for_update=False), opened.size, str(disk))
    return before, after


def set_signature(disk: Path, value: int, host: Host = LOCAL,
                  region: SwapRegion | None = None) -> tuple[HibernationHeader, HibernationHeader]:
    """Set HW_SIG and hw_sig = value, so a kernel whose running signature differs refuses the image."""
    _require_u32(value)

    def set_hw_sig(header: HibernationHeader, page: bytearray) -> None:
        tail = header.page_size - _TAIL.size
        struct.pack_into("<I", page, tail + _HW_SIG_AT, value)
        struct.pack_into("<I", page, tail + _FLAGS_AT, header.flags | ImageFlag.HW_SIG)

    action = f"set the hardware signature to 0x{value:08x}"
    return _edit_image_header(disk, action, set_hw_sig, lambda header: header.problems, host, region)


def discard_image(disk: Path, host: Host = LOCAL,
                  region: SwapRegion | None = None) -> tuple[HibernationHeader, HibernationHeader]:
    """Put the original swap signature back, as the kernel does on resume: the next boot is cold.

    Only the original signature has to be sound; a bad image offset is no reason to keep an image.
    """

    def restore_signature(header: HibernationHeader, page: bytearray) -> None:
        tail = header.page_size - _TAIL.size
        page[tail + _SIG_AT : tail + _SIG_AT + 10] = page[tail + _ORIG_SIG_AT : tail + _ORIG_SIG_AT + 10]

    return _edit_image_header(
        disk, "discard the hibernation image", restore_signature, lambda header: header.signature_problems, host,
        region,
    )
