"""The JSON schemas' enums say what lab.vocabulary (and the PSCI personalities) say, word for word."""

from __future__ import annotations

from lab.paths import load_schema
from lab.psci.attach import NO_LAYER
from lab.psci.firmware import PsciPersonality
from lab.vocabulary import CONSOLE_LABELS, CONSOLE_PATTERNS, GUEST_ARCHES, ConsoleMark, PowerOffClass, guest_arch

SCENARIO = load_schema("scenario")
MATRIX = load_schema("matrix")
RECIPE = load_schema("image-recipe")


def test_power_off_classes_in_scenarios_are_the_verdicts_classes():
    assert SCENARIO["$defs"]["power_off_class"]["enum"] == [str(c) for c in PowerOffClass]


def test_personalities_in_schemas_are_the_firmwares():
    personalities = [*(str(p) for p in PsciPersonality), NO_LAYER]
    assert SCENARIO["$defs"]["personality"]["enum"] == personalities
    assert MATRIX["properties"]["personalities"]["items"]["enum"] == personalities


def test_every_arch_name_a_schema_accepts_is_known_to_the_vocabulary():
    names = {name for arch in GUEST_ARCHES for name in arch.names}
    assert set(MATRIX["properties"]["arch"]["enum"]) == names
    assert {guest_arch(name) for name in SCENARIO["properties"]["arches"]["items"]["enum"]} == set(GUEST_ARCHES)
    assert set(RECIPE["properties"]["arch"]["enum"]) == {arch.debian for arch in GUEST_ARCHES}


def test_every_console_mark_has_a_pattern_and_a_label():
    assert set(CONSOLE_PATTERNS) == set(CONSOLE_LABELS) == set(ConsoleMark)
