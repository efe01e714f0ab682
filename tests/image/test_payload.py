"""What a host image carries from the build host: the lab's QEMU build and guest images, and where they go."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from lab.errors import SetupError
from lab.image.guest_image import GuestImage
from lab.image.payload import BLANK_FILES, blank_digest, payload, payload_entries


def _qemu_build(root: Path) -> Path:
    """A finished cross build's layout as `lab qemu build --target arm64` leaves it."""
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    binary = root / "bin" / "qemu-system-aarch64"
    binary.write_bytes(b"qemu")
    (root / "lib" / "ld-linux-aarch64.so.1").write_bytes(b"loader")
    (root / "lib" / "libglib-2.0.so.0").write_bytes(b"glib")
    (root / "build.json").write_text(json.dumps({"source": "qemu 1:10.2.2+ds-1", "series_sha256": "abc"}))
    return binary


def _guest_image(root: Path, name: str = "debian-arm64", swap_mib: int = 1) -> GuestImage:
    root.mkdir(parents=True)
    (root / "vmlinuz").write_bytes(b"kernel " + name.encode())
    (root / "initramfs.cpio").write_bytes(b"initramfs " + name.encode())
    (root / "manifest.json").write_text(json.dumps({"name": name, "arch": "arm64", "kernel_release": "7.2.13",
                                                    "kernel_append": "console=ttyAMA0"}))
    with (root / "swap.raw").open("wb") as swap:
        swap.truncate(swap_mib << 20)
    return GuestImage.open(root)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_qemu_build_goes_under_opt_lab_qemu_and_runs_through_its_own_loader(tmp_path):
    carried = payload({"arm64": _qemu_build(tmp_path / "build")}, [])
    assert sorted(path for f in carried.files for path in f.paths) == [
        "opt/lab-qemu/bin/qemu-system-aarch64", "opt/lab-qemu/lib/ld-linux-aarch64.so.1",
        "opt/lab-qemu/lib/libglib-2.0.so.0"]
    (build,) = carried.manifest["qemu_builds"]
    assert build["command"] == ["/opt/lab-qemu/lib/ld-linux-aarch64.so.1", "--library-path", "/opt/lab-qemu/lib",
                                "/opt/lab-qemu/bin/qemu-system-aarch64"]
    assert build["binary_sha256"] == _sha(b"qemu")


def test_a_native_build_without_its_libraries_is_refused(tmp_path):
    binary = _qemu_build(tmp_path / "build")
    (tmp_path / "build" / "lib" / "ld-linux-aarch64.so.1").unlink()
    with pytest.raises(SetupError, match="no lib/ld-linux"):
        payload({"arm64": binary}, [])


def test_guest_image_files_are_in_the_file_cache_by_sha256_and_named_by_image(tmp_path):
    carried = payload({}, [_guest_image(tmp_path / "g")])
    kernel = _sha(b"kernel debian-arm64")
    by_name = {Path(f.paths[1]).name: f for f in carried.files}
    assert by_name["vmlinuz"].paths == (f"var/cache/lab/files/{kernel}", "var/lib/lab/images/debian-arm64/vmlinuz")
    assert not by_name["vmlinuz"].blank and by_name["swap.raw"].blank
    assert by_name["swap.raw"].sha256 == _sha(b"\0" * (1 << 20))
    section = carried.manifest["guest_images"]["debian-arm64"]
    assert section["directory"] == "/var/lib/lab/images/debian-arm64"
    assert section["files"]["vmlinuz"] == {"sha256": kernel, "size": len(b"kernel debian-arm64"),
                                           "cache": f"/var/cache/lab/files/{kernel}"}
    assert set(section["files"]) == {"vmlinuz", "initramfs.cpio", "manifest.json", "swap.raw"}


def test_two_images_share_one_cache_entry_for_the_same_blank_template(tmp_path):
    carried = payload({}, [_guest_image(tmp_path / "a", "a"), _guest_image(tmp_path / "b", "b")])
    (swap,) = [f for f in carried.files if f.blank]
    assert swap.paths[1:] == ("var/lib/lab/images/a/swap.raw", "var/lib/lab/images/b/swap.raw")


def test_a_swap_template_that_is_not_blank_is_refused(tmp_path):
    swap = tmp_path / "swap.raw"
    swap.write_bytes(b"\0" * 4096 + b"SWAPSPACE2")
    with pytest.raises(SetupError, match="not blank"):
        blank_digest(swap)


def test_entries_hold_data_once_link_the_other_names_and_list_the_blank_files(tmp_path):
    carried = payload({}, [_guest_image(tmp_path / "g")])
    entries = payload_entries(carried.files, {"var"})
    by_path = {e.path: e for e in entries}
    kernel = next(f for f in carried.files if f.paths[1].endswith("vmlinuz"))
    assert by_path[kernel.paths[0]].data == b"kernel debian-arm64"
    assert by_path[kernel.paths[1]].link == kernel.paths[0]
    swap = next(f for f in carried.files if f.blank)
    assert not any(path in by_path for path in swap.paths)
    assert by_path[BLANK_FILES].data.decode() == f"{1 << 20} {' '.join(swap.paths)}\n"
    directories = [e.path for e in entries if stat.S_ISDIR(e.mode)]
    assert "var" not in directories
    assert directories.index("var/cache") < directories.index("var/cache/lab/files")
