"""Finding the conduit instruction: decoding synthetic Images, System.map parsing, the cache."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from lab.psci import symbols
from lab.psci.symbols import (
    HVC_FUNCTION,
    INSN_HVC_0,
    INSN_SMC_0,
    MAX_SCAN_WORDS,
    NOKASLR_TEXT_BASE,
    SMC_FUNCTION,
    ConduitSites,
    KernelSymbolsError,
    conduit_sites_from_image,
    default_cache_dir,
    describe_instruction,
    find_conduit_offset,
    find_conduit_sites,
    parse_system_map,
    text_relative_offsets,
)

BTI_C = 0xD503245F
PACIASP = 0xD503233F
NOP = 0xD503201F
LDR_X4_SP = 0xF94003E4


def words(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def synthetic_image() -> bytes:
    """Two functions laid out like Debian's: smc variant at 0x80, hvc variant at 0xb0, BTI pads first."""
    image = bytearray(0x100)
    image[0x80:0x88] = words(BTI_C, INSN_SMC_0)
    image[0xB0:0xBC] = words(BTI_C, INSN_HVC_0, LDR_X4_SP)
    return bytes(image)


def test_landing_pad_then_hvc() -> None:
    assert find_conduit_offset(synthetic_image(), 0xB0, INSN_HVC_0) == 0xB4
    assert find_conduit_offset(synthetic_image(), 0x80, INSN_SMC_0) == 0x84


def test_pac_pad_and_nops_are_skipped() -> None:
    image = words(PACIASP, NOP, NOP, INSN_HVC_0)
    assert find_conduit_offset(image, 0, INSN_HVC_0) == 12


def test_without_a_landing_pad_the_first_word_is_the_conduit() -> None:
    assert find_conduit_offset(words(INSN_HVC_0), 0, INSN_HVC_0) == 0


def test_no_conduit_is_a_clear_error() -> None:
    image = words(BTI_C, LDR_X4_SP, *([NOP] * (MAX_SCAN_WORDS + 4)), INSN_HVC_0)
    with pytest.raises(KernelSymbolsError) as caught:
        find_conduit_offset(image, 0, INSN_HVC_0)
    message = str(caught.value)
    assert "hvc #0" in message and "bti c" in message and ".word 0xf94003e4" in message


def test_the_other_conduit_does_not_count() -> None:
    with pytest.raises(KernelSymbolsError, match="smc #0"):
        find_conduit_offset(words(BTI_C, INSN_HVC_0), 0, INSN_SMC_0)


def test_scan_stops_at_the_end_of_the_image() -> None:
    with pytest.raises(KernelSymbolsError, match="no `hvc #0`"):
        find_conduit_offset(words(BTI_C), 0, INSN_HVC_0)


def test_describe_instruction() -> None:
    assert describe_instruction(BTI_C) == "bti c"
    assert describe_instruction(INSN_HVC_0) == "hvc #0"
    assert describe_instruction(0xD4000002 | (0x1234 << 5)) == "hvc #4660"
    assert describe_instruction(0xD503235F) == "hint #26"


def test_sites_are_runtime_addresses_from_the_text_base() -> None:
    sites = conduit_sites_from_image(synthetic_image(), {HVC_FUNCTION: 0xB0, SMC_FUNCTION: 0x80}, "ab")
    expected = ConduitSites(kernel_sha256="ab", hvc=NOKASLR_TEXT_BASE + 0xB4, smc=NOKASLR_TEXT_BASE + 0x84)
    assert sites == expected
    assert sites.addresses == (NOKASLR_TEXT_BASE + 0xB4, NOKASLR_TEXT_BASE + 0x84)
    rebased = conduit_sites_from_image(synthetic_image(), {HVC_FUNCTION: 0xB0}, "ab", text_base=0x1000)
    assert (rebased.hvc, rebased.smc, rebased.addresses) == (0x10B4, None, (0x10B4,))


SYSTEM_MAP = """\
ffff800080000000 T _text
ffff800080010000 T _stext
ffff800080043c80 T __arm_smccc_smc
ffff800080043cb0 T __arm_smccc_hvc
ffff800080043cb0 t __arm_smccc_hvc
not a symbol line
"""


def test_system_map_offsets_are_relative_to_text() -> None:
    symbols = parse_system_map(SYSTEM_MAP)
    assert symbols["_stext"] == 0xFFFF800080010000
    offsets = text_relative_offsets(symbols, "System.map")
    assert offsets == {HVC_FUNCTION: 0x43CB0, SMC_FUNCTION: 0x43C80}


def test_system_map_without_text_is_refused() -> None:
    placeholder = "ffffffffffffffff B The real System.map is in the linux-image-dbg package\n"
    with pytest.raises(KernelSymbolsError, match="_text"):
        text_relative_offsets(parse_system_map(placeholder), "System.map")


def test_system_map_without_conduit_functions_is_refused() -> None:
    with pytest.raises(KernelSymbolsError, match="neither"):
        text_relative_offsets({"_text": 0}, "System.map")


def test_find_sites_with_a_system_map_and_the_cache(tmp_path: Path) -> None:
    image = bytearray(0x44000)
    image[0x43C80:0x43C88] = words(BTI_C, INSN_SMC_0)
    image[0x43CB0:0x43CB8] = words(BTI_C, INSN_HVC_0)
    kernel = tmp_path / "Image"
    kernel.write_bytes(bytes(image))
    system_map = tmp_path / "System.map"
    system_map.write_text(SYSTEM_MAP)
    cache = tmp_path / "cache"

    sites = find_conduit_sites(kernel, cache, system_map=system_map)
    assert sites.hvc == 0xFFFF800080043CB4
    assert sites.smc == 0xFFFF800080043C84
    cached = json.loads((cache / f"{sites.kernel_sha256}.json").read_text())
    assert cached["function_offsets"] == {HVC_FUNCTION: 0x43CB0, SMC_FUNCTION: 0x43C80}

    assert cached["conduit_offsets"] == {HVC_FUNCTION: 0x43CB4, SMC_FUNCTION: 0x43C84}

    system_map.unlink()
    assert find_conduit_sites(kernel, cache) == sites


def test_a_cache_hit_reads_no_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = tmp_path / "Image"
    kernel.write_bytes(synthetic_image())
    system_map = tmp_path / "System.map"
    system_map.write_text("ffff800080000000 T _text\nffff8000800000b0 T __arm_smccc_hvc\n")
    sites = find_conduit_sites(kernel, tmp_path / "cache", system_map=system_map)

    def no_reading(kernel: Path) -> bytes:
        raise AssertionError("the kernel was read on a cache hit")

    monkeypatch.setattr(symbols, "_decompressed", no_reading)
    assert find_conduit_sites(kernel, tmp_path / "cache") == sites == ConduitSites(
        sites.kernel_sha256, NOKASLR_TEXT_BASE + 0xB4, None)


def test_a_cache_entry_with_function_offsets_only_is_completed(tmp_path: Path) -> None:
    kernel = tmp_path / "Image"
    kernel.write_bytes(synthetic_image())
    digest = hashlib.sha256(synthetic_image()).hexdigest()
    entry = tmp_path / "cache" / f"{digest}.json"
    entry.parent.mkdir()
    entry.write_text(json.dumps({"format": 1, "function_offsets": {HVC_FUNCTION: 0xB0, SMC_FUNCTION: 0x80}}))
    sites = find_conduit_sites(kernel, tmp_path / "cache")
    assert (sites.hvc, sites.smc) == (NOKASLR_TEXT_BASE + 0xB4, NOKASLR_TEXT_BASE + 0x84)
    assert json.loads(entry.read_text())["conduit_offsets"] == {HVC_FUNCTION: 0xB4, SMC_FUNCTION: 0x84}


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "hibernation-lab" / "symbols"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "hibernation-lab" / "symbols"


def test_an_image_without_kallsyms_is_refused(tmp_path: Path) -> None:
    kernel = tmp_path / "Image"
    kernel.write_bytes(bytes(0x10000))
    with pytest.raises(KernelSymbolsError, match="kallsyms"):
        find_conduit_sites(kernel, tmp_path / "cache")
