"""`result.json`: the verdict, every witness, the checks, the phases and what was booted, in one file.

Its version and the history of its shape are in lab.rundir.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from lab.events import StepEnded
from lab.judge.observations import Observations
from lab.judge.verdict import RunVerdict
from lab.rundir import RunDirectory


def write_result(
    run_dir: RunDirectory, scenario: dict[str, str], verdict: RunVerdict, observations: Observations,
    phases: list[StepEnded], environment: dict[str, Any], seconds: float,
) -> None:
    """`scenario` names the scenario: its name, path and description."""
    run_dir.write_result({
        "scenario": scenario,
        "verdict": verdict.to_json(),
        "seconds": round(seconds, 3),
        "phases": [asdict(event) for event in phases],
        "environment": environment,
        "observations": observations.to_json(),
        "files": run_dir.files(),
    })
