"""Where a kernel Image issues its SMCCC conduit instructions, so the PSCI layer can trap them.

Linux makes every PSCI call through `__arm_smccc_hvc` or `__arm_smccc_smc`. Their addresses come from the
Image's own kallsyms (found by vmlinux_to_elf, whose guess of the base address is wrong for arm64 Images,
so only offsets from `_text` are used) or from a System.map. The conduit instruction itself is found by
decoding the function's first words, because Debian's kernels put a BTI landing pad in front of it.
Finding symbols takes seconds, so what was found (function and conduit offsets) is cached per kernel
digest: a cache hit reads neither the kernel nor vmlinux_to_elf, only the digest the lab remembers.
`lab images build` fills the cache, so the first run after a build finds its sites there.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.digest import sha256_file
from lab.errors import SetupError
from lab.machine.bare_metal import INSN_HVC_0
from lab.paths import cache_root

NOKASLR_TEXT_BASE = 0xFFFF_8000_8000_0000
"""`_text` of an arm64 kernel booted with `nokaslr` (48-bit VA, 4 KiB pages), as /proc/kallsyms shows it."""

HVC_FUNCTION = "__arm_smccc_hvc"
SMC_FUNCTION = "__arm_smccc_smc"
TEXT_SYMBOL = "_text"

INSN_SMC_0 = 0xD4000003
MAX_SCAN_WORDS = 16
"""The conduit sits right after the landing pads; a longer scan could only find someone else's hvc."""

_HINT_MASK = 0xFFFFF01F
_HINT_BASE = 0xD503201F
_HINT_NAMES = {
    0xD503201F: "nop",
    0xD503233F: "paciasp",
    0xD503237F: "pacibsp",
    0xD503241F: "bti",
    0xD503245F: "bti c",
    0xD503249F: "bti j",
    0xD50324DF: "bti jc",
}
_EXCEPTION_MASK = 0xFFE0001F
_EXCEPTION_NAMES = {0xD4000001: "svc", 0xD4000002: "hvc", 0xD4000003: "smc"}
_CACHE_FORMAT = 2
"""1 held the function offsets only, so every run decoded the Image again; such entries are upgraded."""
_CONDUITS = ((HVC_FUNCTION, INSN_HVC_0), (SMC_FUNCTION, INSN_SMC_0))


class KernelSymbolsError(SetupError):
    """The kernel does not let the lab find its conduit instructions."""


@dataclass(frozen=True)
class ConduitSites:
    """Runtime virtual addresses of the `hvc #0` / `smc #0` PSCI goes through (None if absent)."""

    kernel_sha256: str
    hvc: int | None
    smc: int | None

    @property
    def addresses(self) -> tuple[int, ...]:
        return tuple(address for address in (self.hvc, self.smc) if address is not None)


def describe_instruction(word: int) -> str:
    """A short mnemonic for the words the scan meets, to make "not found" errors readable."""
    if word & _HINT_MASK == _HINT_BASE:
        return _HINT_NAMES.get(word, f"hint #{(word >> 5) & 0x7F}")
    name = _EXCEPTION_NAMES.get(word & _EXCEPTION_MASK)
    if name:
        return f"{name} #{(word >> 5) & 0xFFFF}"
    return f".word 0x{word:08x}"


def find_conduit_offset(image: bytes, function_offset: int, conduit_word: int) -> int:
    """Offset of the first `conduit_word` among the function's first MAX_SCAN_WORDS instructions."""
    seen: list[str] = []
    for index in range(MAX_SCAN_WORDS):
        offset = function_offset + 4 * index
        if offset + 4 > len(image):
            break
        (word,) = struct.unpack_from("<I", image, offset)
        if word == conduit_word:
            return offset
        seen.append(describe_instruction(word))
    wanted = describe_instruction(conduit_word)
    raise KernelSymbolsError(
        f"no `{wanted}` in the first {MAX_SCAN_WORDS} instructions at offset 0x{function_offset:x}; "
        f"found: {', '.join(seen) or 'nothing (past the end of the Image)'}"
    )


def parse_system_map(text: str) -> dict[str, int]:
    """`ADDR TYPE NAME` lines to {name: address}; the first definition of a name wins."""
    symbols: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        try:
            address = int(parts[0], 16)
        except ValueError:
            continue
        symbols.setdefault(parts[2], address)
    return symbols


def text_relative_offsets(symbols: dict[str, int], source: str) -> dict[str, int]:
    """Offsets of the conduit functions from `_text`, which is also their offset in the Image file."""
    if TEXT_SYMBOL not in symbols:
        raise KernelSymbolsError(f"{source} has no `{TEXT_SYMBOL}` symbol")
    text = symbols[TEXT_SYMBOL]
    offsets = {name: symbols[name] - text for name in (HVC_FUNCTION, SMC_FUNCTION) if name in symbols}
    if not offsets:
        raise KernelSymbolsError(f"{source} has neither {HVC_FUNCTION} nor {SMC_FUNCTION}")
    return offsets


def kallsyms_offsets(image: bytes) -> dict[str, int]:
    """Conduit function offsets from the Image's embedded kallsyms table."""
    from vmlinux_to_elf.core.kallsyms import KallsymsFinder

    try:
        finder = KallsymsFinder(image, 64)
    except Exception as error:
        raise KernelSymbolsError(f"no usable kallsyms in the kernel Image: {error}") from error
    symbols = {
        name: finder.name_to_symbol[name].virtual_address
        for name in (TEXT_SYMBOL, HVC_FUNCTION, SMC_FUNCTION)
        if name in finder.name_to_symbol
    }
    return text_relative_offsets(symbols, "the kernel's kallsyms")


def conduit_offsets(image: bytes, function_offsets: dict[str, int]) -> dict[str, int | None]:
    """Each conduit function's conduit instruction, as an offset in the Image (None: no such function)."""
    return {name: find_conduit_offset(image, function_offsets[name], word) if name in function_offsets else None
            for name, word in _CONDUITS}


def sites_at(offsets: dict[str, int | None], kernel_sha256: str, text_base: int = NOKASLR_TEXT_BASE) -> ConduitSites:
    """Conduit instruction offsets turned into runtime addresses from `text_base`."""
    hvc, smc = (offsets.get(name) for name, _ in _CONDUITS)
    return ConduitSites(kernel_sha256=kernel_sha256, hvc=None if hvc is None else text_base + hvc,
                        smc=None if smc is None else text_base + smc)


def conduit_sites_from_image(
    image: bytes,
    function_offsets: dict[str, int],
    kernel_sha256: str,
    text_base: int = NOKASLR_TEXT_BASE,
) -> ConduitSites:
    """Decode each conduit function and turn its instruction's file offset into a runtime address."""
    return sites_at(conduit_offsets(image, function_offsets), kernel_sha256, text_base)


def default_cache_dir() -> Path:
    return cache_root() / "symbols"


def _decompressed(kernel: Path) -> bytes:
    from vmlinux_to_elf.core.auto_unpack import VmlinuzDecompressor

    decompressed: bytes = VmlinuzDecompressor(kernel.read_bytes()).decompressed
    return decompressed


def find_conduit_sites(
    kernel: Path,
    cache_dir: Path | None = None,
    system_map: Path | None = None,
    text_base: int = NOKASLR_TEXT_BASE,
) -> ConduitSites:
    """The conduit sites of `kernel` (a raw or compressed arm64 Image), from cache when possible.

    The cache holds `_text`-relative offsets, so a different `text_base` reuses it.
    """
    digest = sha256_file(kernel)
    cache_file = (cache_dir or default_cache_dir()) / f"{digest}.json"
    functions, conduits = _read_cache(cache_file)
    if conduits is not None:
        return sites_at(conduits, digest, text_base)
    image = _decompressed(kernel)
    if functions is None and system_map is not None:
        functions = text_relative_offsets(parse_system_map(system_map.read_text()), str(system_map))
    elif functions is None:
        functions = kallsyms_offsets(image)
    conduits = conduit_offsets(image, functions)
    _write_cache(cache_file, functions, conduits)
    return sites_at(conduits, digest, text_base)


def _offsets(data: dict[str, Any], name: str) -> dict[str, int | None] | None:
    offsets = data.get(name)
    if not isinstance(offsets, dict) or not all(v is None or isinstance(v, int) for v in offsets.values()):
        return None
    return offsets


def _read_cache(path: Path) -> tuple[dict[str, int] | None, dict[str, int | None] | None]:
    """(function offsets, conduit offsets) as cached; a format-1 entry has no conduit offsets yet."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict) or data.get("format") not in (1, _CACHE_FORMAT):
        return None, None
    functions = _offsets(data, "function_offsets")
    if functions is None or None in functions.values():
        return None, None
    known = {name: offset for name, offset in functions.items() if offset is not None}
    return known, _offsets(data, "conduit_offsets") if data["format"] == _CACHE_FORMAT else None


def _write_cache(path: Path, functions: dict[str, int], conduits: dict[str, int | None]) -> None:
    """Write atomically so a concurrent run never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"format": _CACHE_FORMAT, "function_offsets": functions,
                                     "conduit_offsets": conduits}, indent=2))
    temporary.replace(path)
