"""The ELF closure of the image's SSH server: its loader and shared libraries, found in the packages' tree."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from lab.errors import SetupError
from lab.image.closure import program_closure
from lab.image.keys import DROPBEAR


def _links(data: bytes) -> tuple[str | None, list[str]]:
    elf = ELFFile(io.BytesIO(data))
    interpreter = next((s.get_interp_name() for s in elf.iter_segments() if s["p_type"] == "PT_INTERP"), None)
    dynamic = next((s for s in elf.iter_segments() if s["p_type"] == "PT_DYNAMIC"), None)
    return interpreter, [t.needed for t in dynamic.iter_tags("DT_NEEDED")] if dynamic else []


def test_every_elf_file_in_the_initramfs_finds_its_loader_and_libraries(archive):
    elves = {name: data for name, (_, data) in archive.items() if data[:4] == b"\x7fELF"}
    assert f"{DROPBEAR}" in elves
    sonames = {Path(name).name for name in elves}
    for name, data in elves.items():
        interpreter, needed = _links(data)
        assert interpreter is None or interpreter.lstrip("/") in archive, f"{name} needs {interpreter}"
        assert set(needed) <= sonames, f"{name} needs {set(needed) - sonames}"
    assert sum(Path(name).name.startswith("ld-linux") for name in elves) == 1, "the loader is taken once"


def _tree_like_debian(archive: dict[str, tuple[int, bytes]], files: list[str], root: Path) -> None:
    """The closure's files laid out as Debian ships them: versioned names behind soname symlinks."""
    for name in files:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(name).name.startswith("ld-linux"):
            real = root / "usr/lib/aarch64-linux-gnu" / Path(name).name
            real.parent.mkdir(parents=True, exist_ok=True)
            real.write_bytes(archive[name][1])
            (root / "usr/lib" / Path(name).name).symlink_to(f"/usr/lib/aarch64-linux-gnu/{Path(name).name}")
        elif ".so." in name:
            target.with_name(target.name + ".0.1").write_bytes(archive[name][1])
            target.symlink_to(target.name + ".0.1")
        else:
            target.write_bytes(archive[name][1])


def test_closure_follows_symlinks_within_the_tree_and_merged_usr(default_image, archive, tmp_path):
    files = default_image.manifest["ssh"]["files"]
    _tree_like_debian(archive, files, tmp_path)
    closure = program_closure(tmp_path, f"/{DROPBEAR}", "arm64")
    assert sorted(closure) == sorted(files)
    assert all(closure[name] == archive[name][1] for name in files)


def test_closure_names_the_library_it_cannot_find(archive, tmp_path):
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / DROPBEAR).write_bytes(archive[DROPBEAR][1])
    with pytest.raises(SetupError, match=r"lib\S+\.so\.\d+ \(needed by /usr/sbin/dropbear\)|ld-linux"):
        program_closure(tmp_path, DROPBEAR, "arm64")
