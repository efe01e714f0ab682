"""The pm_test ladder's verdict: which level of a hibernation fails first, and why, from recorded runs.

The ladder run hibernates one guest once per pm_test level, in the kernel's order, each attempt
announced on the kernel log by a marker line the lab writes to /dev/kmsg; the console between two
markers is that level's. A level fails when its trial check failed (the hibernate command did not
come back with status 0) or a catalogue entry of high or critical severity matched its lines; a
level the run never got to is `not reached`. Pure: it reads values, never a machine.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from lab.judge.catalogue import Entry, Severity, match_boot

MARKER = "lab-triage:"
"""Written to /dev/kmsg before each attempt: `lab-triage: devices`, `lab-triage: test_resume`."""
_MARKER_LINE = re.compile(rf"{MARKER} (\w+)")
FAILING = Severity.HIGH


class LevelStatus(StrEnum):
    OK = "ok"
    FAILS = "FAILS"
    NOT_REACHED = "not reached"


@dataclass(frozen=True)
class LevelResult:
    level: str
    status: LevelStatus
    reason: str = ""

    def describe(self) -> str:
        return f"{self.level} {self.status}" + (f": {self.reason}" if self.reason else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"status": str(self.status)}


def level_segments(lines: list[str]) -> dict[str, list[str]]:
    """Each level's console lines: from its marker to the next marker (or the end)."""
    segments: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        marker = _MARKER_LINE.search(line)
        if marker is not None:
            current = segments.setdefault(marker.group(1), [])
        elif current is not None:
            current.append(line)
    return segments


def judge_level(level: str, check: dict[str, Any] | None, lines: list[str] | None, entries: list[Entry],
                boot: str = "") -> LevelResult:
    """One level: `check` is the trial's check from the run's verdict (None: the step never ran)."""
    if check is None or lines is None:
        return LevelResult(level, LevelStatus.NOT_REACHED)
    findings = [f for f in match_boot(boot, lines, entries) if f.severity >= FAILING]
    if findings:
        worst = max(findings, key=lambda f: f.severity)
        return LevelResult(level, LevelStatus.FAILS, f"{worst.line!r} ({worst.label})")
    if not check["passed"]:
        return LevelResult(level, LevelStatus.FAILS, check["detail"])
    return LevelResult(level, LevelStatus.OK)


def summary_line(results: list[LevelResult]) -> str:
    """`freezer ok, devices ok, platform FAILS: '…'`: up to the first failing level (all when none fails)."""
    shown = []
    for result in results:
        shown.append(result.describe())
        if result.status is not LevelStatus.OK:
            break
    return ", ".join(shown)


def first_failing(results: list[LevelResult]) -> LevelResult | None:
    return next((r for r in results if r.status is LevelStatus.FAILS), None)
