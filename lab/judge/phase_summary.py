"""Min, median and max of each kernel phase over many hibernations: repeated cycles, a matrix's runs.

It works on the JSON form of the phases (`observations.kernel_phases` in result.json), so a matrix
summarises its runs from their files as a run summarises its boots.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from lab.judge.kernel_phases import parse_kernel_phases


def _spread(values: list[float]) -> dict[str, float | int]:
    return {"count": len(values), "min": min(values), "median": round(statistics.median(values), 6),
            "max": max(values)}


def summarize(boots: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per phase name: the spread of its seconds (and of its MB/s where the kernel gave a rate)."""
    seconds: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {}
    for boot in boots:
        for phase in boot.get("phases", []):
            if phase.get("seconds") is not None:
                seconds.setdefault(phase["name"], []).append(float(phase["seconds"]))
            if phase.get("mb_per_s") is not None:
                rates.setdefault(phase["name"], []).append(float(phase["mb_per_s"]))
    summary: dict[str, dict[str, Any]] = {name: {"seconds": _spread(values)} for name, values in seconds.items()}
    for name, values in rates.items():
        summary.setdefault(name, {})["mb_per_s"] = _spread(values)
    return summary


def kernel_phases(consoles: Mapping[str, list[str]]) -> dict[str, Any]:
    """`observations.kernel_phases`: each boot's phases (boots that show none are left out), and their spread."""
    boots = {name: parse_kernel_phases(lines).to_json() for name, lines in consoles.items()}
    shown = {name: boot for name, boot in boots.items() if boot["phases"]}
    return {"boots": shown, "summary": summarize(shown.values())}


def summarize_runs(results: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per scenario, the spread of each phase over every boot of every run of it (a matrix's cells)."""
    boots: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        phases = (result.get("observations") or {}).get("kernel_phases") or {}
        scenario = (result.get("scenario") or {}).get("name", "?")
        boots.setdefault(scenario, []).extend((phases.get("boots") or {}).values())
    return {scenario: summarize(found) for scenario, found in boots.items()}
