"""The ELF closure of a program: its loader (PT_INTERP) and every shared library it loads (DT_NEEDED).

Files are looked up in the tree the image's packages were extracted into, symlinks followed
inside that tree (never out to the build host's own files).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from lab.errors import SetupError
from lab.vocabulary import guest_arch


def _elf_links(data: bytes) -> tuple[str | None, list[str]]:
    """An ELF file's program interpreter (PT_INTERP) and the sonames it loads (DT_NEEDED)."""
    interpreter, needed = None, []
    for segment in ELFFile(io.BytesIO(data)).iter_segments():
        if isinstance(segment, InterpSegment):
            interpreter = segment.get_interp_name()
        elif isinstance(segment, DynamicSegment):
            needed += [tag.needed for tag in segment.iter_tags("DT_NEEDED")]  # type: ignore[attr-defined]
    return interpreter, needed


def _in_tree(root: Path, path: str) -> Path | None:
    """A file of the extracted packages by its guest path, symlinks followed inside the tree.

    Merged-/usr packages ship `/lib/...` files under `/usr/lib/...`, so both are looked at.
    """
    for candidate in (path.lstrip("/"), "usr/" + path.lstrip("/")):
        current = root / candidate
        for _ in range(16):
            if not current.is_symlink():
                break
            target = os.readlink(current)
            current = root / target.lstrip("/") if target.startswith("/") else current.parent / target
        if not current.is_symlink() and current.is_file():
            return current
    return None


def program_closure(root: Path, program: str, arch: str) -> dict[str, bytes]:
    """A dynamically linked program with its loader and every shared library it loads, by guest path.

    The loader also answers to its soname (libc.so.6 needs ld-linux-aarch64.so.1): it is taken
    once, where PT_INTERP names it.
    """
    multiarch = guest_arch(arch).multiarch
    library_dirs = (f"usr/lib/{multiarch}", f"lib/{multiarch}", "usr/lib", "lib")
    files: dict[str, bytes] = {}
    by_soname: dict[str, str] = {}
    pending = [(program.lstrip("/"), "the recipe")]
    while pending:
        guest_path, wanted_by = pending.pop()
        found = _in_tree(root, guest_path)
        if found is None:
            raise SetupError(f"/{guest_path} (wanted by {wanted_by}) is in none of the image's packages")
        files[guest_path] = found.read_bytes()
        interpreter, needed = _elf_links(files[guest_path])
        if interpreter is not None and Path(interpreter).name not in by_soname:
            by_soname[Path(interpreter).name] = interpreter.lstrip("/")
            pending.append((interpreter.lstrip("/"), f"/{guest_path}"))
        for soname in needed:
            if soname in by_soname:
                continue
            where = next((d for d in library_dirs if _in_tree(root, f"{d}/{soname}")), None)
            if where is None:
                raise SetupError(f"{soname} (needed by /{guest_path}) is in none of the image's packages: "
                                 "add the package that holds it to the recipe's extra_packages")
            by_soname[soname] = f"{where}/{soname}"
            pending.append((by_soname[soname], f"/{guest_path}"))
    return files
