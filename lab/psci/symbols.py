"""Where a kernel Image issues its SMCCC conduit instructions, so the PSCI layer can trap them.

Linux makes every PSCI call through `__arm_smccc_hvc` or `__arm_smccc_smc`. Their addresses come from the
Image's own kallsyms (found by vmlinux_to_elf, whose guess of the base address is wrong for arm64 Images,
so only offsets from `_text` are used) or from a System.map. The conduit instruction itself is found by
decoding the function's first words, because Debian's kernels put a BTI landing pad in front of it.
Finding symbols takes seconds, so results are cached per kernel digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from vmlinux_to_elf.core.auto_unpack import VmlinuzDecompressor
from vmlinux_to_elf.core.kallsyms import KallsymsFinder

from lab.errors import SetupError

NOKASLR_TEXT_BASE = 0xFFFF_8000_8000_0000
"""`_text` of an arm64 kernel booted with `nokaslr` (48-bit VA, 4 KiB pages), as /proc/kallsyms shows it."""

HVC_FUNCTION = "__arm_smccc_hvc"
SMC_FUNCTION = "__arm_smccc_smc"
TEXT_SYMBOL = "_text"

INSN_HVC_0 = 0xD4000002
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
_CACHE_FORMAT = 1


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


def conduit_sites_from_image(
    image: bytes,
    function_offsets: dict[str, int],
    kernel_sha256: str,
    text_base: int = NOKASLR_TEXT_BASE,
) -> ConduitSites:
    """Decode each conduit function and turn its instruction's file offset into a runtime address."""
    sites: dict[str, int | None] = {}
    for name, word in ((HVC_FUNCTION, INSN_HVC_0), (SMC_FUNCTION, INSN_SMC_0)):
        offset = function_offsets.get(name)
        sites[name] = None if offset is None else text_base + find_conduit_offset(image, offset, word)
    return ConduitSites(kernel_sha256=kernel_sha256, hvc=sites[HVC_FUNCTION], smc=sites[SMC_FUNCTION])


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hibernation-lab" / "symbols"


def find_conduit_sites(
    kernel: Path,
    cache_dir: Path | None = None,
    system_map: Path | None = None,
    text_base: int = NOKASLR_TEXT_BASE,
) -> ConduitSites:
    """The conduit sites of `kernel` (a raw or compressed arm64 Image), from cache when possible.

    The cache holds `_text`-relative offsets, so a different `text_base` reuses it.
    """
    raw = kernel.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    cache_file = (cache_dir or default_cache_dir()) / f"{digest}.json"
    image = VmlinuzDecompressor(raw).decompressed
    offsets = _read_cache(cache_file)
    if offsets is not None:
        return conduit_sites_from_image(image, offsets, digest, text_base)
    if system_map is not None:
        offsets = text_relative_offsets(parse_system_map(system_map.read_text()), str(system_map))
    else:
        offsets = kallsyms_offsets(image)
    sites = conduit_sites_from_image(image, offsets, digest, text_base)
    _write_cache(cache_file, offsets)
    return sites


def _read_cache(path: Path) -> dict[str, int] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return None
    offsets = data.get("function_offsets")
    if not isinstance(offsets, dict) or not all(isinstance(value, int) for value in offsets.values()):
        return None
    return offsets


def _write_cache(path: Path, offsets: dict[str, int]) -> None:
    """Write atomically so a concurrent run never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"format": _CACHE_FORMAT, "function_offsets": offsets}, indent=2))
    temporary.replace(path)
