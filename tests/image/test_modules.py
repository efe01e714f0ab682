"""Kernel modules for the initramfs: found by name, .ko.xz decompressed, dependencies (`depends=`) first."""

from __future__ import annotations

import lzma

import pytest

from lab.errors import SetupError
from lab.image.modules import collect_modules


def _modules_tree(archive: dict[str, tuple[int, bytes]], root) -> list[str]:
    """The initramfs's modules laid out as Debian ships them: xz-compressed, in subdirectories, dashed names."""
    names = archive["etc/lab/modules"][1].decode().split()
    for name in names:
        path = root / "kernel/drivers" / name[0] / f"{name.replace('_', '-')}.ko.xz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lzma.compress(archive[f"lib/modules/{name}.ko"][1]))
    return names


def test_modules_come_decompressed_with_their_dependencies_first(default_image, archive, tmp_path):
    names = _modules_tree(archive, tmp_path)
    assert names == default_image.manifest["modules"]
    assert len(names) > 2, "virtio_net's dependencies are in the image"
    collected = collect_modules(tmp_path, ("virtio-blk", "virtio_net"))
    assert [name for name, _ in collected] == names
    assert all(data == archive[f"lib/modules/{name}.ko"][1] for name, data in collected)


def test_each_module_is_taken_once(archive, tmp_path):
    names = _modules_tree(archive, tmp_path)
    assert [name for name, _ in collect_modules(tmp_path, (*reversed(names), *names))] == \
        [name for name, _ in collect_modules(tmp_path, tuple(reversed(names)))]
    assert len(collect_modules(tmp_path, tuple(names))) == len(names)


def test_a_missing_module_is_named(tmp_path):
    with pytest.raises(SetupError, match="kernel module no_such_module is not in"):
        collect_modules(tmp_path, ("no-such-module",))
