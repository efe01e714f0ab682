"""Kernel modules for the initramfs: the named ones and, first, what their `.modinfo` says they depend on.

Modules are found in the kernel's modules package by name (`-` and `_` alike), plain `.ko` or
xz-compressed `.ko.xz`, and go into the initramfs decompressed.
"""

from __future__ import annotations

import io
import lzma
from pathlib import Path

from elftools.elf.elffile import ELFFile

from lab.errors import SetupError


def _module_depends(module: bytes) -> list[str]:
    """The `depends=` list from a module's .modinfo section."""
    section = ELFFile(io.BytesIO(module)).get_section_by_name(".modinfo")
    if section is None:
        return []
    for field in section.data().split(b"\0"):
        if field.startswith(b"depends="):
            return [name.decode() for name in field[len(b"depends="):].split(b",") if name]
    return []


def _find_module(modules_root: Path, name: str) -> Path:
    wanted = name.replace("-", "_")
    for path in modules_root.rglob("*.ko*"):
        if path.name.split(".ko")[0].replace("-", "_") == wanted:
            return path
    raise SetupError(f"kernel module {name} is not in the kernel's modules package")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def collect_modules(modules_root: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """Named modules and their dependencies, decompressed, dependencies first."""
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        data = _module_bytes(_find_module(modules_root, key))
        for dependency in _module_depends(data):
            visit(dependency)
        ordered.append((key, data))

    for name in wanted:
        visit(name)
    return ordered
