"""The kernel's own PM phases as a lane of the run's timeline: each phase a bar where the kernel ran it.

A phase is placed at its boot's launch plus its kernel timestamps, as the console's milestones are;
the restored kernel keeps the clock of the kernel that hibernated, so its bars are approximate.
Phases that failed are drawn in the error colour; slow device callbacks are in each bar's detail.
"""

from __future__ import annotations

from typing import Any

from lab.report.timeline import ERROR_COLOR, Item

KERNEL_LANE = "kernel PM"
MIN_SHOWN_SECONDS = 0.05
"""Device phases of a few milliseconds would be slivers with overlapping labels: only their table rows show."""


def _label(phase: dict[str, Any]) -> str:
    rate = f" {phase['mb_per_s']:g} MB/s" if phase.get("mb_per_s") is not None else ""
    return f"{phase['name']}{rate}"


def _detail(boot: str, phase: dict[str, Any], callbacks: list[dict[str, Any]]) -> str:
    seconds = phase.get("seconds")
    took = f"{seconds:.3f}s" if seconds is not None else "duration not shown"
    counts = "".join(f", {key} {value}" for key, value in (phase.get("detail") or {}).items())
    kbytes = f", {phase['kbytes']} kbytes" if phase.get("kbytes") is not None else ""
    slow = [c for c in callbacks if c.get("phase") == phase["name"].removeprefix("devices: ")]
    slowest = "".join(f"; {c['device']} {c['callback']} {c['usecs']} µs" for c in slow)
    return f"{boot}: {phase['name']} {took}{kbytes}{counts}{slowest} — {phase.get('line', '')}"


def kernel_items(result: dict[str, Any] | None, launches: dict[str, float]) -> list[Item]:
    """Bars for the kernel phases `result.json` holds, on the run's clock."""
    boots = (((result or {}).get("observations") or {}).get("kernel_phases") or {}).get("boots") or {}
    items = []
    for boot, phases in boots.items():
        if boot not in launches:
            continue
        for phase in phases.get("phases", []):
            seconds = phase.get("seconds") or 0.0
            if phase.get("kind") == "devices" and seconds < MIN_SHOWN_SECONDS and not phase.get("failed"):
                continue
            start = launches[boot] + phase["at"] - seconds
            items.append(Item(KERNEL_LANE, start, launches[boot] + phase["at"] if seconds else None, _label(phase),
                              _detail(boot, phase, phases.get("slowest_callbacks", [])), boot,
                              ERROR_COLOR if phase.get("failed") else "", bool(phase.get("failed"))))
    return items
