"""The hibernation header on real disks: swap areas made by mkswap, raw and qcow2, via QEMU's tools.

The image-present header is written into the mkswap'd raw file the way the kernel writes it
(signature and tail at the end of the first page, the rest of the page kept), then the disk is
converted to qcow2 with qemu-img where the test wants qcow2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.deadline import wait_until
from lab.disk import header as header_module
from lab.disk.header import (
    HeaderError,
    ImageFlag,
    NoImageError,
    discard_image,
    parse_signature_value,
    read_header,
    set_signature,
)
from lab.disk.lock import DiskBusy, DiskLock
from lab.errors import SetupError, UsageError

DISK_SIZE = 2 * 1024 * 1024
SWAP_UUID = "01234567-89ab-cdef-0123-456789abcdef"
SWAP_LABEL = "labswap"
IMAGE_CRC32 = 0xDEADBEEF
IMAGE_FLAGS = ImageFlag.PLATFORM_MODE | ImageFlag.CRC32 | ImageFlag.LZ4
LAYOUTS = [(4096, "raw"), (4096, "qcow2"), (65536, "raw"), (65536, "qcow2")]
LAYOUT_IDS = [f"{page_size // 1024}k-{fmt}" for page_size, fmt in LAYOUTS]
MKSWAP = shutil.which("mkswap", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def make_swap_area(path: Path, page_size: int) -> Path:
    """A raw disk holding a swap area exactly as mkswap makes it for `page_size` pages."""
    assert MKSWAP, "mkswap (util-linux) is needed to build swap areas"
    run("qemu-img", "create", "-q", "-f", "raw", str(path), str(DISK_SIZE))
    run(MKSWAP, "-q", "-p", str(page_size), "-L", SWAP_LABEL, "-U", SWAP_UUID, str(path))
    return path


def hibernate_into(
    raw_disk: Path,
    page_size: int,
    image_offset: int = 1,
    original_signature: bytes = b"SWAPSPACE2",
) -> None:
    """Write the header tail the kernel writes when it saves an image (hw_sig 0, no HW_SIG)."""
    tail = struct.pack(
        "<IIQI10s10s", 0, IMAGE_CRC32, image_offset, IMAGE_FLAGS, original_signature, b"S1SUSPEND"
    )
    with raw_disk.open("r+b") as disk:
        disk.seek(page_size - 0x1000 + 0xFD8)
        disk.write(tail)


def in_format(raw_disk: Path, fmt: str) -> Path:
    if fmt == "raw":
        return raw_disk
    converted = raw_disk.with_suffix(f".{fmt}")
    run("qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw_disk), str(converted))
    return converted


def guest_view(disk: Path, fmt: str) -> bytes:
    """The disk's contents as a guest sees them, whatever the format."""
    raw_copy = disk.with_name(disk.name + ".view.raw")
    run("qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(disk), str(raw_copy))
    try:
        return raw_copy.read_bytes()
    finally:
        raw_copy.unlink()


def file_digest(disk: Path) -> str:
    return hashlib.sha256(disk.read_bytes()).hexdigest()


@pytest.fixture(params=LAYOUTS, ids=LAYOUT_IDS)
def hibernated(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, int, str]:
    """A disk with a hibernation image header: (path, page size, format)."""
    page_size, fmt = request.param
    raw = make_swap_area(tmp_path / "swap.raw", page_size)
    hibernate_into(raw, page_size)
    return in_format(raw, fmt), page_size, fmt


def test_read_header_decodes_an_image_present_header(hibernated: tuple[Path, int, str]) -> None:
    disk, page_size, _ = hibernated
    header = read_header(disk)
    assert header.page_size == page_size
    assert header.signature == "S1SUSPEND"
    assert header.original_signature == "SWAPSPACE2"
    assert header.image_present
    assert header.flags == IMAGE_FLAGS
    assert header.flag_names == ("PLATFORM_MODE", "CRC32", "LZ4")
    assert (header.hw_sig, header.image_offset, header.crc32) == (0, 1, IMAGE_CRC32)
    assert header.disk_size == DISK_SIZE
    assert header.swap is not None
    assert (header.swap.version, header.swap.last_page) == (1, DISK_SIZE // page_size - 1)
    assert (header.swap.uuid, header.swap.label) == (SWAP_UUID, SWAP_LABEL)
    assert header.problems == ()

    document = json.loads(json.dumps(header.to_json()))
    assert document["image_present"] is True
    assert document["flag_names"] == ["PLATFORM_MODE", "CRC32", "LZ4"]
    assert document["swap"]["uuid"] == SWAP_UUID

    lines = header.describe().splitlines()
    assert "signature        S1SUSPEND (hibernation image present)" in lines
    assert "flags            0x00000015 PLATFORM_MODE CRC32 LZ4" in lines
    value_column = len("orig. signature  ")
    assert all(line[value_column - 2 : value_column] == "  " and line[value_column] != " " for line in lines)


def test_set_signature_sets_hw_sig_and_its_flag_and_nothing_else(hibernated: tuple[Path, int, str]) -> None:
    disk, page_size, fmt = hibernated
    contents_before = guest_view(disk, fmt)

    before, after = set_signature(disk, 0x12345678)

    assert (before.hw_sig, before.flags) == (0, IMAGE_FLAGS)
    assert (after.hw_sig, after.flags) == (0x12345678, IMAGE_FLAGS | ImageFlag.HW_SIG)
    assert "HW_SIG" in after.flag_names
    assert after.image_present
    assert (after.image_offset, after.crc32, after.swap) == (before.image_offset, before.crc32, before.swap)
    assert read_header(disk) == after

    contents_after = guest_view(disk, fmt)
    pairs = zip(contents_before, contents_after, strict=True)
    changed = {index for index, (old, new) in enumerate(pairs) if old != new}
    tail_start = page_size - 0x1000
    hw_sig_bytes = set(range(tail_start + 0xFD8, tail_start + 0xFDC))
    flags_bytes = set(range(tail_start + 0xFE8, tail_start + 0xFEC))
    assert changed and changed <= hw_sig_bytes | flags_bytes


def test_discard_image_restores_the_swap_signature(hibernated: tuple[Path, int, str]) -> None:
    disk, page_size, _ = hibernated
    before, after = discard_image(disk)
    assert before.image_present
    assert not after.image_present
    assert after.signature == "SWAPSPACE2"
    assert after.page_size == page_size
    assert read_header(disk) == after
    with pytest.raises(NoImageError, match="no hibernation image"):
        set_signature(disk, 1)


@pytest.mark.parametrize(("page_size", "fmt"), LAYOUTS, ids=LAYOUT_IDS)
def test_plain_swap_area_has_no_image_to_edit(tmp_path: Path, page_size: int, fmt: str) -> None:
    disk = in_format(make_swap_area(tmp_path / "swap.raw", page_size), fmt)
    untouched = file_digest(disk)

    header = read_header(disk)
    assert (header.page_size, header.signature, header.image_present) == (page_size, "SWAPSPACE2", False)
    assert header.swap is not None and header.swap.label == SWAP_LABEL
    assert "no hibernation image" in header.describe()

    with pytest.raises(NoImageError, match=r"signature SWAPSPACE2, not S1SUSPEND"):
        set_signature(disk, 0x1234)
    with pytest.raises(NoImageError):
        discard_image(disk)
    assert file_digest(disk) == untouched


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_disk_without_any_signature_is_reported_as_unknown(tmp_path: Path, fmt: str) -> None:
    disk = tmp_path / f"blank.{fmt}"
    run("qemu-img", "create", "-q", "-f", fmt, str(disk), str(DISK_SIZE))
    with pytest.raises(HeaderError, match=r"no swap or hibernation signature at 0xFF6/0xFFF6"):
        read_header(disk)
    with pytest.raises(HeaderError):
        set_signature(disk, 1)


def test_disk_smaller_than_64k_and_not_whole_sectors(tmp_path: Path) -> None:
    """QEMU sees such a disk as whole 512-byte sectors; header reads and edits work on it and never grow it."""
    disk = tmp_path / "odd.raw"
    disk.write_bytes(b"\0" * 13288)
    with disk.open("r+b") as raw:
        raw.seek(0xFF6)
        raw.write(b"SWAPSPACE2")
    hibernate_into(disk, 4096)
    header = read_header(disk)
    assert (header.page_size, header.disk_size, header.image_present) == (4096, 13312, True)
    assert set_signature(disk, 0x1234)[1].hw_sig == 0x1234
    assert disk.stat().st_size == 13288


def test_disk_too_small_for_a_header(tmp_path: Path) -> None:
    disk = tmp_path / "tiny.raw"
    run("qemu-img", "create", "-q", "-f", "raw", str(disk), "2048")
    with pytest.raises(HeaderError, match="too small"):
        read_header(disk)


@pytest.mark.parametrize(
    ("image_offset", "original_signature", "problem"),
    [
        (0, b"SWAPSPACE2", "image offset 0 points at the header page"),
        (DISK_SIZE // 4096, b"SWAPSPACE2", "beyond the swap area's 512 pages"),
        (2**40, b"SWAPSPACE2", "beyond the swap area"),
        (1, b"GARBAGE!!!", "original signature 'GARBAGE!!!' is not a swap signature"),
    ],
    ids=["offset-zero", "offset-just-beyond", "offset-far-beyond", "bad-original-signature"],
)
def test_corrupt_header_is_refused_and_left_alone(
    tmp_path: Path, image_offset: int, original_signature: bytes, problem: str
) -> None:
    disk = make_swap_area(tmp_path / "swap.raw", 4096)
    hibernate_into(disk, 4096, image_offset=image_offset, original_signature=original_signature)
    untouched = file_digest(disk)

    assert problem in " ".join(read_header(disk).problems)
    with pytest.raises(HeaderError, match="looks corrupt") as refusal:
        set_signature(disk, 0x1234)
    assert problem in str(refusal.value)
    assert file_digest(disk) == untouched


def test_discard_image_needs_only_a_sound_original_signature(tmp_path: Path) -> None:
    disk = make_swap_area(tmp_path / "swap.raw", 4096)
    hibernate_into(disk, 4096, image_offset=0)
    assert not discard_image(disk)[1].image_present

    hibernate_into(disk, 4096, original_signature=b"GARBAGE!!!")
    with pytest.raises(HeaderError, match="original signature"):
        discard_image(disk)


@pytest.mark.parametrize("value", [-1, 2**32])
def test_signature_value_outside_u32_is_refused(tmp_path: Path, value: int) -> None:
    disk = make_swap_area(tmp_path / "swap.raw", 4096)
    hibernate_into(disk, 4096)
    untouched = file_digest(disk)
    with pytest.raises(UsageError, match="outside"):
        set_signature(disk, value)
    assert file_digest(disk) == untouched


def test_zero_and_largest_signature_values_are_accepted(tmp_path: Path) -> None:
    disk = make_swap_area(tmp_path / "swap.raw", 4096)
    hibernate_into(disk, 4096)
    assert set_signature(disk, 0xFFFFFFFF)[1].hw_sig == 0xFFFFFFFF
    assert set_signature(disk, 0)[1].hw_sig == 0


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("4660", 4660), ("0x1234", 0x1234), ("0XabCD", 0xABCD), (" 7 ", 7), ("0xFFFFFFFF", 2**32 - 1)],
)
def test_parse_signature_value_accepts_decimal_and_hex(text: str, value: int) -> None:
    assert parse_signature_value(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "0x", "1.5", "0o17", "12abc", "0x100000000", "4294967296"])
def test_parse_signature_value_rejects_anything_else(text: str) -> None:
    with pytest.raises(UsageError):
        parse_signature_value(text)


def test_lab_lock_held_elsewhere_refuses_edits_but_not_inspection(tmp_path: Path) -> None:
    disk = make_swap_area(tmp_path / "swap.raw", 4096)
    hibernate_into(disk, 4096)
    untouched = file_digest(disk)
    # A second open file description conflicts with this one exactly as another process would.
    with DiskLock(disk, "lab machine other"):
        assert read_header(disk).image_present
        holder = r"lab lock .*swap\.raw\.lab-lock is held by pid \d+ \(lab machine other\)"
        with pytest.raises(DiskBusy, match=holder):
            set_signature(disk, 0x1234)
        with pytest.raises(DiskBusy):
            discard_image(disk)
    assert file_digest(disk) == untouched
    assert set_signature(disk, 0x1234)[1].hw_sig == 0x1234


@pytest.fixture
def running_vm_disks(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A raw and a qcow2 hibernated disk attached to a paused QEMU, which holds their write locks."""
    raw = make_swap_area(tmp_path / "swap.raw", 4096)
    hibernate_into(raw, 4096)
    qcow2 = in_format(raw, "qcow2")
    drives = []
    for index, (path, fmt) in enumerate([(raw, "raw"), (qcow2, "qcow2")]):
        drives += ["-drive", f"file={path},format={fmt},if=none,id=d{index}"]
        drives += ["-device", f"virtio-blk-pci,drive=d{index},romfile="]
    vm = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "virt", "-nodefaults", "-display", "none", "-S", *drives],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: _vm_holds_write_permission(vm, [raw, qcow2]),
            20,
            "QEMU to take its write lock on the disks",
        )
        yield raw, qcow2
    finally:
        vm.kill()
        vm.wait(timeout=10)


def _vm_holds_write_permission(vm: subprocess.Popen[str], disks: list[Path]) -> bool | None:
    """Watch /proc/locks rather than probing with qemu-io, whose own lock could make QEMU's fail.

    QEMU marks each permission it holds on an image with an OFD lock on byte 100 + the
    permission's bit; "write" is bit 1, so byte 101.
    """
    if vm.poll() is not None:
        assert vm.stderr is not None
        pytest.fail(f"QEMU exited early: {vm.stderr.read()}")
    locked_inodes = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "OFDLCK" not in fields:
            continue
        first, last = int(fields[-2]), fields[-1]
        if first <= 101 and (last == "EOF" or int(last) >= 101):
            locked_inodes.add(int(fields[-3].rsplit(":", 1)[1]))
    return True if all(disk.stat().st_ino in locked_inodes for disk in disks) else None


def test_disk_of_a_running_vm_is_refused_but_can_be_inspected(running_vm_disks: tuple[Path, Path]) -> None:
    for disk in running_vm_disks:
        untouched = file_digest(disk)
        assert read_header(disk).image_present
        with pytest.raises(DiskBusy, match=r'QEMU refused its image lock \(Failed to get "write" lock\)'):
            set_signature(disk, 0x1234)
        with pytest.raises(DiskBusy):
            discard_image(disk)
        assert file_digest(disk) == untouched


def test_update_is_refused_at_the_read_while_a_vm_holds_the_disk(
    running_vm_disks: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw included: a read-only open of a raw disk succeeds under a running VM, the read for an update must not."""
    monkeypatch.setattr(header_module, "write_start", lambda disk, page: pytest.fail("the update got to its write"))
    for disk in running_vm_disks:
        with pytest.raises(DiskBusy, match=r'QEMU refused its image lock \(Failed to get "write" lock\)'):
            set_signature(disk, 0x1234)


def test_missing_disk_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such disk image"):
        read_header(tmp_path / "absent.qcow2")


def test_missing_qemu_tools_are_a_setup_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = make_swap_area(tmp_path / "swap.raw", 4096)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(SetupError, match="qemu-img not found"):
        read_header(disk)
