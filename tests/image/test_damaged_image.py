"""A cached image whose files no longer match its manifest is refused with one line and never booted: a
truncated initramfs, a kernel with one byte changed (found through the digest cache, which a rewrite
invalidates), a file gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.errors import SetupError
from lab.image.guest_image import GuestImage
from lab.image.store import find_image


def _copy(image: GuestImage, to: Path) -> Path:
    return Path(shutil.copytree(image.path, to / image.path.name))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _flip_a_byte(path: Path) -> None:
    """Same size, same mtime: only the content (and the ctime no user can set) changes."""
    stat = path.stat()
    with path.open("r+b") as stream:
        stream.seek(stat.st_size // 2)
        byte = stream.read(1)
        stream.seek(-1, os.SEEK_CUR)
        stream.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


DAMAGE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated initramfs": ("initramfs.cpio", _truncate),
    "kernel byte flipped": ("vmlinuz", _flip_a_byte),
    "initramfs gone": ("initramfs.cpio", Path.unlink),
}


@pytest.mark.parametrize(("file", "damage"), DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_image_directory_is_refused_before_qemu_starts(tmp_path: Path, default_image: GuestImage,
                                                                 file: str, damage: Callable[[Path], None]) -> None:
    image = _copy(default_image, tmp_path)
    assert find_image(str(image)).damage() == [], "the copy matches its manifest"
    damage(image / file)
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "lab.cli", "scenario", "poweroff-baseline", "--image", str(image),
                           "--runs-dir", str(runs)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"lab: error: image {image} does not match its manifest ({file} "), \
        done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    (run_dir,) = runs.iterdir()
    assert not list(run_dir.glob("qemu-boot*.cmdline")), "nothing was booted"


def test_a_damaged_image_in_the_cache_is_refused_naming_the_rebuild(tmp_path: Path, default_image: GuestImage,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    image = _copy(default_image, cache / "images")
    monkeypatch.setenv("LAB_CACHE_DIR", str(cache))
    assert find_image(default_image.name).path == image
    _truncate(image / "initramfs.cpio")
    with pytest.raises(SetupError, match=rf"initramfs.cpio has sha256 .*`lab images build {default_image.name}` "
                                         "rebuilds it"):
        find_image(default_image.name)
