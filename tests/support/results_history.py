"""Generated nights for the results store's tests and benchmark: run directories made from a recorded one.

Each generated cell is the recorded run's result.json with its verdict, power-off class, kernel
version and phase times replaced, and a console log holding one line of our choosing: what the
store, `lab compare`, the known issues and the dashboard read.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).parent.parent / "report" / "data" / "run-no-stale-resume" / "result.json"
FIRST_NIGHT = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Cell:
    """One cell of one night: its id and how it should have gone."""

    id: str
    status: str = "PASS"
    kind: str = "hibernate-off2"
    kernel: str = "7.2.13-1"
    hibernate_seconds: float = 19.0
    resume_seconds: float = 33.0
    console: str = "PM: hibernation: hibernation exit"
    flaky: bool = False
    """Failed first, then passed on a retry."""


def _result(template: dict[str, Any], cell: Cell, status: str) -> dict[str, Any]:
    result = copy.deepcopy(template)
    scenario = cell.id.partition("[")[0]
    result["scenario"]["name"] = scenario
    result["verdict"]["status"] = status
    result["verdict"]["reason"] = "13 checks passed" if status == "PASS" else f"boot1 power-off was {cell.kind}"
    result["verdict"]["power_offs"][0]["class"] = cell.kind
    result["environment"]["image"]["inputs"][0]["version"] = cell.kernel
    for phase in result["phases"]:
        if phase["step"] == "hibernate":
            phase["seconds"] = cell.hibernate_seconds
        if (phase.get("outcome") or {}).get("outcome") == "resumed":
            phase["seconds"] = cell.resume_seconds
    return result


def _write_run(directory: Path, result: dict[str, Any], console: str, cell: Cell) -> None:
    """result.json, and consoles whose kernel timestamps put the kernel's hibernation at 80% of the lab's
    hibernate step and its restore at half the lab's resume boot."""
    directory.mkdir(parents=True)
    (directory / "result.json").write_text(json.dumps(result))
    (directory / "console-boot1.log").write_text(
        f"[    1.000000] {console}\n[    2.000000] PM: hibernation: hibernation entry\n"
        f"[{2 + cell.hibernate_seconds * 0.8:12.6f}] reboot: Power down\n")
    (directory / "console-boot2.log").write_text(
        "[    3.000000] PM: hibernation: resume from hibernation\n"
        f"[{3 + cell.resume_seconds * 0.5:12.6f}] PM: hibernation: hibernation exit\n")


def write_night(root: Path, matrix: str, night: int, cells: list[Cell]) -> Path:
    """A matrix directory for night number `night` (one day apart), with matrix.json and every cell's run."""
    template = json.loads(RECORDED.read_text())
    started = FIRST_NIGHT + timedelta(days=night)
    directory = root / f"{matrix}-{started:%Y%m%dT%H%M%S}"
    entries = []
    for index, cell in enumerate(cells):
        name = f"cell{index}"
        retries = []
        _write_run(directory / name, _result(template, cell, "FAIL" if cell.flaky else cell.status), cell.console,
                   cell)
        if cell.flaky:
            _write_run(directory / f"{name}.retry1", _result(template, cell, "PASS"), cell.console, cell)
            retries.append(str(directory / f"{name}.retry1"))
        entries.append({"id": cell.id, "scenario": cell.id.partition("[")[0], "status": cell.status,
                        "reason": "", "run_dir": str(directory / name), "retries": retries})
    (directory / "matrix.json").write_text(json.dumps({"matrix": matrix, "started": started.isoformat(),
                                                       "cells": entries}))
    return directory


def write_single_run(root: Path, started: datetime, cell: Cell) -> Path:
    """A run outside any matrix, as `lab scenario` leaves it: `root/<UTC time>-<scenario>`."""
    directory = root / f"{started:%Y%m%dT%H%M%S}-{cell.id.partition('[')[0]}"
    _write_run(directory, _result(json.loads(RECORDED.read_text()), cell, cell.status), cell.console, cell)
    return directory
