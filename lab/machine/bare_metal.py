"""Tiny aarch64 programs that QEMU boots as a Linux Image: the few A64 encodings they need, and the header.

QEMU's `-kernel` loads an arm64 Image at RAM + text_offset and enters it at EL1 with the MMU off,
as it would a kernel, so a handful of instructions can make firmware calls and let QMP and guest RAM
tell what happened. The lab asks a QEMU build what its own PSCI does this way (lab.qemu.off2_probe),
and the conformance tests run KVM's SYSTEM_OFF2 selftest cases so.
"""

from __future__ import annotations

import struct

RAM_BASE = 0x4000_0000
"""Where RAM starts on QEMU's `virt` machine."""
TEXT_OFFSET = 0x8_0000
LOAD_ADDRESS = RAM_BASE + TEXT_OFFSET
HEADER_BYTES = 0x40
IMAGE_MAGIC = 0x644D5241
"""`ARM\\x64` at offset 0x38: what makes QEMU treat the file as an arm64 Image."""
LINK_REGISTER = 30
INSN_HVC_0 = 0xD4000002
RET = 0xD65F0000 | LINK_REGISTER << 5


def movz(rd: int, imm16: int, shift: int) -> int:
    return 0xD2800000 | (shift // 16) << 21 | imm16 << 5 | rd


def movk(rd: int, imm16: int, shift: int) -> int:
    return 0xF2800000 | (shift // 16) << 21 | imm16 << 5 | rd


def mov_imm64(rd: int, value: int) -> list[int]:
    """movz for the lowest 16 bits, movk for each further non-zero 16-bit chunk."""
    words = [movz(rd, value & 0xFFFF, 0)]
    for shift in (16, 32, 48):
        chunk = (value >> shift) & 0xFFFF
        if chunk:
            words.append(movk(rd, chunk, shift))
    return words


def str_imm(rt: int, rn: int, byte_offset: int) -> int:
    """str Xt, [Xn, #byte_offset] (unsigned, 8-byte scaled offset)."""
    return 0xF9000000 | (byte_offset // 8) << 10 | rn << 5 | rt


def branch(from_offset: int, to_offset: int, link: bool = False) -> int:
    return (0x94000000 if link else 0x14000000) | ((to_offset - from_offset) // 4) & 0x3FFFFFF


def bit_branch(rt: int, bit: int, from_offset: int, to_offset: int, if_set: bool) -> int:
    """tbnz (`if_set`) or tbz Xt, #bit, to: branch on one bit of a register (14-bit word offset)."""
    opcode = 0x37000000 if if_set else 0x36000000
    return opcode | (bit >> 5) << 31 | (bit & 0x1F) << 19 | (((to_offset - from_offset) // 4) & 0x3FFF) << 5 | rt


def image_header(image_size: int, entry: int = HEADER_BYTES) -> bytes:
    """arm64 Linux Image header whose first word branches to `entry` (a byte offset in the Image)."""
    return struct.pack("<IIQQQQQQII", branch(0, entry), 0, TEXT_OFFSET, image_size, 0, 0, 0, 0, IMAGE_MAGIC, 0)


def image(code: list[int], entry_word: int = 0) -> bytes:
    """A bootable Image: the header, then `code`, entered at its word `entry_word` (code[0] sits at
    LOAD_ADDRESS + HEADER_BYTES)."""
    body = struct.pack(f"<{len(code)}I", *code)
    return image_header(HEADER_BYTES + len(body), HEADER_BYTES + 4 * entry_word) + body
