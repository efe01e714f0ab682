"""PSCI as the guest should see it: the firmware answers for each lab personality, as pure logic.

Under TCG, QEMU's own PSCI is v1.1 and knows nothing of SYSTEM_OFF2. The PSCI layer traps the guest's
conduit instruction and asks `PsciFirmware` what to do with each call; this module decides, the layer
(lab.psci.layer) does the register surgery. Keeping the decisions free of I/O lets them be checked
case by case against the kernel's KVM selftest.

Personalities and the guest behaviour each one exposes:

| personality            | VERSION | FEATURES(OFF2) | SYSTEM_OFF2(type, arg)              | exposes        |
|------------------------|---------|----------------|-------------------------------------|----------------|
| `kvm` (default)        | 1.3     | 1 (HIBERNATE)  | type 0/1, arg 0: power off; else -2 | reference path |
| `none`                 | QEMU's  | QEMU's (-1)    | QEMU's (-1)                         | stock TCG      |
| `reject-explicit-type` | 1.3     | 1              | type 0 only; type 1 -> -2           | explicit type  |
| `reject-zero-type`     | 1.3     | 1              | type 1 only; type 0 -> -2           | the 0 alias    |
| `alpha-spec`           | 1.3     | 0              | type 0 only                         | 0 as "none"    |
| `return-to-guest`      | 1.3     | 1              | validated as kvm, then -6 returned  | the fallback   |

- `kvm`: Linux KVM >= 6.13; a correct guest calls SYSTEM_OFF2(0, 0) at the end of hibernation.
- `none`: QEMU's PSCI v1.1 untouched; the guest never sees SYSTEM_OFF2 and powers off with SYSTEM_OFF.
- `reject-explicit-type`: a guest passing HIBERNATE_OFF explicitly gets INVALID_PARAMS (Linux passes 0).
- `reject-zero-type`: Linux's type 0 gets INVALID_PARAMS; the guest must fall back to SYSTEM_OFF.
- `alpha-spec`: FEATURES answers 0 like the v1.3 alpha; Linux reads that as "no hibernate type".
- `return-to-guest`: what a guest sees if a VMM resumes the vCPU after KVM's OFF2 exit (x0 = -6).

Every call these rows do not mention passes through to QEMU's PSCI unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lab.vocabulary import (
    HIBERNATE_OFF,
    PSCI_FEATURES,
    PSCI_SYSTEM_OFF,
    PSCI_VERSION,
    SYSTEM_OFF2_IDS,
)

INVALID_PARAMS = -2
INTERNAL_FAILURE = -6

VERSION_1_3 = (1 << 16) | 3

_SMC64_BIT = 1 << 30
_MASK_32 = 0xFFFF_FFFF
_MASK_64 = 0xFFFF_FFFF_FFFF_FFFF


def is_smc64(function_id: int) -> bool:
    return bool(function_id & _SMC64_BIT)


def to_register(value: int) -> int:
    """A signed PSCI return value as the 64-bit x0 the guest reads."""
    return value & _MASK_64


def to_signed(register: int) -> int:
    """x0 as the signed value PSCI return codes are written in."""
    register &= _MASK_64
    return register - (1 << 64) if register >> 63 else register


class PsciPersonality(StrEnum):
    """Which firmware the guest meets; see the module docstring for what each one exposes."""

    KVM = "kvm"
    NONE = "none"
    REJECT_EXPLICIT_TYPE = "reject-explicit-type"
    REJECT_ZERO_TYPE = "reject-zero-type"
    ALPHA_SPEC = "alpha-spec"
    RETURN_TO_GUEST = "return-to-guest"


class PsciAction(StrEnum):
    RETURN = "return"
    """Write `value` to x0 and skip the conduit instruction: the firmware answered."""
    POWER_OFF = "power-off"
    """Rewrite x0 to SYSTEM_OFF and let QEMU execute the call, so QEMU powers off as it always does."""
    PASS_THROUGH = "pass-through"
    """Let QEMU's own PSCI handle the call untouched."""


@dataclass(frozen=True)
class PsciResponse:
    action: PsciAction
    value: int | None = None

    @classmethod
    def returning(cls, value: int) -> PsciResponse:
        return cls(PsciAction.RETURN, value)


PASS_THROUGH = PsciResponse(PsciAction.PASS_THROUGH)
POWER_OFF = PsciResponse(PsciAction.POWER_OFF)
POWER_OFF_FUNCTION = PSCI_SYSTEM_OFF
"""What the layer writes to x0 for an accepted SYSTEM_OFF2: QEMU then reports a normal guest shutdown."""

_ACCEPTED_TYPES: dict[PsciPersonality, frozenset[int]] = {
    PsciPersonality.KVM: frozenset({0, HIBERNATE_OFF}),
    PsciPersonality.RETURN_TO_GUEST: frozenset({0, HIBERNATE_OFF}),
    PsciPersonality.REJECT_EXPLICIT_TYPE: frozenset({0}),
    PsciPersonality.REJECT_ZERO_TYPE: frozenset({HIBERNATE_OFF}),
    PsciPersonality.ALPHA_SPEC: frozenset({0}),
}


class PsciFirmware:
    """Decides, per call, what a PSCI v1.3 firmware of the chosen personality answers."""

    def __init__(self, personality: PsciPersonality = PsciPersonality.KVM) -> None:
        self.personality = personality

    def handle(self, function_id: int, x1: int = 0, x2: int = 0, x3: int = 0) -> PsciResponse:
        """The response to one call; arguments are the raw 64-bit x1..x3."""
        if self.personality is PsciPersonality.NONE:
            return PASS_THROUGH
        function_id &= _MASK_32
        if not is_smc64(function_id):
            # An SMC32 call only defines the low halves of its arguments, as KVM narrows them.
            x1, x2, x3 = x1 & _MASK_32, x2 & _MASK_32, x3 & _MASK_32
        if function_id == PSCI_VERSION:
            return PsciResponse.returning(VERSION_1_3)
        if function_id == PSCI_FEATURES and x1 in SYSTEM_OFF2_IDS:
            alpha = self.personality is PsciPersonality.ALPHA_SPEC
            return PsciResponse.returning(0 if alpha else HIBERNATE_OFF)
        if function_id in SYSTEM_OFF2_IDS:
            return self._system_off2(off_type=x1, cookie=x2)
        return PASS_THROUGH

    def _system_off2(self, off_type: int, cookie: int) -> PsciResponse:
        if off_type not in _ACCEPTED_TYPES[self.personality] or cookie != 0:
            return PsciResponse.returning(INVALID_PARAMS)
        if self.personality is PsciPersonality.RETURN_TO_GUEST:
            return PsciResponse.returning(INTERNAL_FAILURE)
        return POWER_OFF
