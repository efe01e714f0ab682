"""The kernel's own hibernation timings, read from its timestamped console lines.

The lab's phases time its steps from the host; these are the guest kernel's clock: from
`hibernation entry` to `Power down` (hibernate), the image write it reports (`Wrote N kbytes in S
seconds`), and from `resume from hibernation` to `hibernation exit` (restore).
"""

from __future__ import annotations

import re
from pathlib import Path

from lab.rundir import RunDirectory
from lab.vocabulary import CONSOLE_PATTERNS, ConsoleMark

_STAMPED = r"\[\s*(?P<seconds>\d+\.\d+)\]\s*"
_ENTRY = re.compile(_STAMPED + CONSOLE_PATTERNS[ConsoleMark.HIBERNATION_ENTRY].pattern)
_POWER_DOWN = re.compile(_STAMPED + CONSOLE_PATTERNS[ConsoleMark.POWER_DOWN].pattern)
_RESUME_START = re.compile(_STAMPED + r"PM: hibernation: resume from hibernation")
_RESUMED = re.compile(_STAMPED + CONSOLE_PATTERNS[ConsoleMark.RESUMED].pattern)
_WROTE = re.compile(r"PM: hibernation: Wrote (?P<kbytes>\d+) kbytes in (?P<seconds>\d+\.\d+) seconds")


def _first(pattern: re.Pattern[str], lines: list[str], after: float = -1.0) -> re.Match[str] | None:
    for line in lines:
        match = pattern.search(line)
        if match and float(match["seconds"]) > after:
            return match
    return None


def _span(lines: list[str], start: re.Pattern[str], end: re.Pattern[str]) -> float | None:
    first = _first(start, lines)
    last = _first(end, lines, float(first["seconds"])) if first else None
    return round(float(last["seconds"]) - float(first["seconds"]), 3) if first and last else None


def kernel_timings(run_dir: Path) -> dict[str, float]:
    """The first hibernation and the first restore the consoles show, in the kernel's seconds."""
    timings: dict[str, float] = {}
    for boot in RunDirectory(run_dir).boots():
        lines = boot.read_console()
        if "hibernate_seconds" not in timings and (span := _span(lines, _ENTRY, _POWER_DOWN)) is not None:
            timings["hibernate_seconds"] = span
            if wrote := _first(_WROTE, lines):
                timings["image_kbytes"], timings["image_write_seconds"] = float(wrote["kbytes"]), float(
                    wrote["seconds"])
        if "restore_seconds" not in timings and (span := _span(lines, _RESUME_START, _RESUMED)) is not None:
            timings["restore_seconds"] = span
    return timings
