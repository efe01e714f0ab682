"""PsciFirmware against the cases of Linux's KVM selftest (arm64/psci_test.c) and each personality."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.psci import firmware as firmware_module
from lab.psci.firmware import (
    INTERNAL_FAILURE,
    INVALID_PARAMS,
    PASS_THROUGH,
    POWER_OFF,
    VERSION_1_3,
    PsciAction,
    PsciFirmware,
    PsciPersonality,
    PsciResponse,
    to_register,
    to_signed,
)
from lab.scenario.model import load_scenario, shipped_scenarios
from lab.vocabulary import (
    HIBERNATE_OFF,
    PSCI_CPU_ON_64,
    PSCI_FEATURES,
    PSCI_SYSTEM_OFF,
    PSCI_SYSTEM_OFF2,
    PSCI_SYSTEM_OFF2_64,
    PSCI_VERSION,
    psci_function_name,
)

OFF2_IDS = [PSCI_SYSTEM_OFF2, PSCI_SYSTEM_OFF2_64]
KVM_LIKE = [PsciPersonality.KVM, PsciPersonality.RETURN_TO_GUEST]


def returned(value: int) -> PsciResponse:
    return PsciResponse(PsciAction.RETURN, value)


# The selftest's cases, in its order, for the personalities that claim to behave like KVM.


@pytest.mark.parametrize("personality", KVM_LIKE)
def test_selftest_version_is_at_least_1_3(personality: PsciPersonality) -> None:
    response = PsciFirmware(personality).handle(PSCI_VERSION)
    assert response.action is PsciAction.RETURN
    assert response.value is not None and response.value >= VERSION_1_3


@pytest.mark.parametrize("personality", KVM_LIKE)
@pytest.mark.parametrize("off2_id", OFF2_IDS)
def test_selftest_both_ids_report_hibernate_off(personality: PsciPersonality, off2_id: int) -> None:
    response = PsciFirmware(personality).handle(PSCI_FEATURES, off2_id)
    assert response.action is PsciAction.RETURN
    assert response.value is not None and response.value & HIBERNATE_OFF


@pytest.mark.parametrize("personality", KVM_LIKE)
@pytest.mark.parametrize("off_type", [HIBERNATE_OFF, 0])
def test_selftest_nonzero_second_argument_is_invalid(personality: PsciPersonality, off_type: int) -> None:
    assert PsciFirmware(personality).handle(PSCI_SYSTEM_OFF2_64, off_type, 1) == returned(INVALID_PARAMS)


@pytest.mark.parametrize("off_type", [HIBERNATE_OFF, 0])
def test_selftest_accepted_call_powers_off(off_type: int) -> None:
    assert PsciFirmware(PsciPersonality.KVM).handle(PSCI_SYSTEM_OFF2_64, off_type, 0) == POWER_OFF


@pytest.mark.parametrize("off_type", [HIBERNATE_OFF, 0])
def test_selftest_resumed_vcpu_reads_internal_failure(off_type: int) -> None:
    firmware = PsciFirmware(PsciPersonality.RETURN_TO_GUEST)
    assert firmware.handle(PSCI_SYSTEM_OFF2_64, off_type, 0) == returned(INTERNAL_FAILURE)


# Beyond the selftest: KVM's other rules.


def test_kvm_rejects_unknown_types() -> None:
    firmware = PsciFirmware()
    assert firmware.personality is PsciPersonality.KVM
    assert firmware.handle(PSCI_SYSTEM_OFF2_64, 2, 0) == returned(INVALID_PARAMS)
    assert firmware.handle(PSCI_SYSTEM_OFF2_64, 1 << 32, 0) == returned(INVALID_PARAMS)


def test_smc32_arguments_are_narrowed_to_32_bits() -> None:
    firmware = PsciFirmware()
    assert firmware.handle(PSCI_SYSTEM_OFF2, 1 << 32, 0xFFFF_FFFF_0000_0000) == POWER_OFF
    assert firmware.handle(PSCI_SYSTEM_OFF2, 0xFFFF_FFFF_0000_0001, 0) == POWER_OFF
    assert firmware.handle(PSCI_SYSTEM_OFF2, 0, 1 << 31) == returned(INVALID_PARAMS)
    assert firmware.handle(PSCI_FEATURES, 0xFFFF_FFFF_0000_0000 | PSCI_SYSTEM_OFF2_64) == returned(HIBERNATE_OFF)


def test_smc64_arguments_are_not_narrowed() -> None:
    assert PsciFirmware().handle(PSCI_SYSTEM_OFF2_64, 0, 1 << 32) == returned(INVALID_PARAMS)


@pytest.mark.parametrize("personality", [p for p in PsciPersonality if p is not PsciPersonality.NONE])
def test_everything_else_passes_through_to_qemu(personality: PsciPersonality) -> None:
    firmware = PsciFirmware(personality)
    assert firmware.handle(PSCI_CPU_ON_64, 1, 0x40080000, 0) == PASS_THROUGH
    assert firmware.handle(PSCI_SYSTEM_OFF) == PASS_THROUGH
    assert firmware.handle(PSCI_FEATURES, PSCI_CPU_ON_64) == PASS_THROUGH
    assert firmware.handle(0x80000000) == PASS_THROUGH


# Each personality's distinctive answers.


@pytest.mark.parametrize(
    ("function_id", "x1", "x2"),
    [
        (PSCI_VERSION, 0, 0),
        (PSCI_FEATURES, PSCI_SYSTEM_OFF2_64, 0),
        (PSCI_SYSTEM_OFF2_64, 0, 0),
        (PSCI_SYSTEM_OFF2, HIBERNATE_OFF, 0),
    ],
)
def test_none_answers_nothing(function_id: int, x1: int, x2: int) -> None:
    assert PsciFirmware(PsciPersonality.NONE).handle(function_id, x1, x2) == PASS_THROUGH


def test_reject_explicit_type_accepts_only_type_zero() -> None:
    firmware = PsciFirmware(PsciPersonality.REJECT_EXPLICIT_TYPE)
    assert firmware.handle(PSCI_FEATURES, PSCI_SYSTEM_OFF2_64) == returned(HIBERNATE_OFF)
    assert firmware.handle(PSCI_SYSTEM_OFF2_64, 0, 0) == POWER_OFF
    assert firmware.handle(PSCI_SYSTEM_OFF2_64, HIBERNATE_OFF, 0) == returned(INVALID_PARAMS)


def test_reject_zero_type_accepts_only_hibernate_off() -> None:
    firmware = PsciFirmware(PsciPersonality.REJECT_ZERO_TYPE)
    assert firmware.handle(PSCI_FEATURES, PSCI_SYSTEM_OFF2_64) == returned(HIBERNATE_OFF)
    assert firmware.handle(PSCI_SYSTEM_OFF2_64, HIBERNATE_OFF, 0) == POWER_OFF
    assert firmware.handle(PSCI_SYSTEM_OFF2_64, 0, 0) == returned(INVALID_PARAMS)


@pytest.mark.parametrize("off2_id", OFF2_IDS)
def test_alpha_spec_reports_no_type_bitmask(off2_id: int) -> None:
    firmware = PsciFirmware(PsciPersonality.ALPHA_SPEC)
    assert firmware.handle(PSCI_VERSION) == returned(VERSION_1_3)
    assert firmware.handle(PSCI_FEATURES, off2_id) == returned(0)
    assert firmware.handle(off2_id, 0, 0) == POWER_OFF
    assert firmware.handle(off2_id, HIBERNATE_OFF, 0) == returned(INVALID_PARAMS)


def test_return_to_guest_still_validates_like_kvm() -> None:
    firmware = PsciFirmware(PsciPersonality.RETURN_TO_GUEST)
    assert firmware.handle(PSCI_SYSTEM_OFF2, 2, 0) == returned(INVALID_PARAMS)
    assert firmware.handle(PSCI_SYSTEM_OFF2, 0, 0) == returned(INTERNAL_FAILURE)


# The module docstring's table is the specification each personality is checked against.

TABLE_ROW = re.compile(r"^\| `([a-z-]+)`[^|]*\|([^|]+)\|([^|]+)\|([^|]+)\|([^|]+)\|$", re.MULTILINE)
PROBED_TYPES = (0, HIBERNATE_OFF, 2)


@dataclass(frozen=True)
class DocumentedRow:
    version: str
    features: str
    system_off2: str


def documented_rows() -> dict[str, DocumentedRow]:
    doc = firmware_module.__doc__ or ""
    return {m.group(1): DocumentedRow(*(cell.strip() for cell in m.group(2, 3, 4))) for m in TABLE_ROW.finditer(doc)}


def expected_off2(row: DocumentedRow, rows: dict[str, DocumentedRow]) -> dict[int, PsciResponse]:
    """What SYSTEM_OFF2(type, 0) answers for each probed type, read from the table's cell."""
    cell = row.system_off2
    if cell.startswith("QEMU's"):
        return dict.fromkeys(PROBED_TYPES, PASS_THROUGH)
    if (validated := re.fullmatch(r"validated as (\S+), then (-\d+) returned", cell)) is not None:
        base = expected_off2(rows[validated.group(1)], rows)
        answer = returned(int(validated.group(2)))
        return {off_type: answer if response == POWER_OFF else response for off_type, response in base.items()}
    accepted = re.match(r"type ([\d/]+)", cell)
    assert accepted is not None, f"cannot read the SYSTEM_OFF2 cell {cell!r}"
    types = {int(t) for t in accepted.group(1).split("/")}
    return {t: POWER_OFF if t in types else returned(INVALID_PARAMS) for t in PROBED_TYPES}


def test_every_personality_has_one_documented_row_and_note() -> None:
    rows = documented_rows()
    assert sorted(rows) == sorted(p.value for p in PsciPersonality)
    notes = re.findall(r"^- `([a-z-]+)`:", firmware_module.__doc__ or "", re.MULTILINE)
    assert sorted(notes) == sorted(rows)


@pytest.mark.parametrize("personality", list(PsciPersonality))
def test_personality_answers_as_its_documented_row(personality: PsciPersonality) -> None:
    rows = documented_rows()
    row = rows[personality.value]
    firmware = PsciFirmware(PsciPersonality(personality.value))
    version = PASS_THROUGH if row.version.startswith("QEMU's") else returned(VERSION_1_3)
    assert row.version in ("1.3", "QEMU's")
    assert firmware.handle(PSCI_VERSION) == version
    features = PASS_THROUGH if row.features.startswith("QEMU's") else returned(int(row.features.split()[0]))
    for off2_id in OFF2_IDS:
        assert firmware.handle(PSCI_FEATURES, off2_id) == features
        answers = {off_type: firmware.handle(off2_id, off_type, 0) for off_type in PROBED_TYPES}
        assert answers == expected_off2(row, rows), row.system_off2


def test_no_two_personalities_behave_alike() -> None:
    calls = [(PSCI_VERSION, 0, 0), (PSCI_FEATURES, PSCI_SYSTEM_OFF2_64, 0)]
    calls += [(PSCI_SYSTEM_OFF2_64, off_type, cookie) for off_type in PROBED_TYPES for cookie in (0, 1)]
    behaviours = {p: tuple(PsciFirmware(p).handle(*call) for call in calls) for p in PsciPersonality}
    assert len(set(behaviours.values())) == len(behaviours), behaviours


def test_every_personality_is_exercised_by_a_shipped_scenario() -> None:
    exercised = {load_scenario(path).psci for path in shipped_scenarios()}
    assert {p.value for p in PsciPersonality} <= exercised


@pytest.mark.parametrize("personality", list(PsciPersonality))
def test_a_scenario_can_name_every_personality(tmp_path: Path, personality: PsciPersonality) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(f"name: demo\ndescription: demo\npsci: {personality.value}\nsteps:\n  - boot\n")
    assert PsciPersonality(load_scenario(path).psci) is personality


def test_a_scenario_cannot_name_an_unknown_personality(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text("name: demo\ndescription: demo\npsci: bogus\nsteps:\n  - boot\n")
    with pytest.raises(UsageError, match="psci"):
        load_scenario(path)


def test_register_conversions() -> None:
    assert to_register(INVALID_PARAMS) == 0xFFFF_FFFF_FFFF_FFFE
    assert to_signed(0xFFFF_FFFF_FFFF_FFFA) == INTERNAL_FAILURE
    assert to_signed(VERSION_1_3) == 0x10003


def test_names() -> None:
    assert psci_function_name(PSCI_SYSTEM_OFF2_64) == "SYSTEM_OFF2_64"
    assert psci_function_name(0x84000099) == "0x84000099"
