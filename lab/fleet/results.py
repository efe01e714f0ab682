"""A matrix's results: matrix.json, junit.xml and report.html in the matrix directory.

They are written from the cells' outcomes and run directories alone, whichever engine ran the
cells, and also when the matrix was interrupted.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lab.errors import LabError
from lab.fleet.engine import CellOutcome, CellStatus
from lab.fleet.matrix import Matrix
from lab.judge.phase_summary import summarize_runs
from lab.report.html import write_matrix_report
from lab.report.junit import write_matrix_junit
from lab.results.known import known_labels
from lab.results.record import read_matrix
from lab.rundir import RunDirectory


@dataclass
class MatrixResult:
    """The matrix directory and every cell's outcome, in the order the matrix file gives them."""

    directory: Path
    outcomes: list[CellOutcome] = field(default_factory=list)
    retries: dict[str, list[Path]] = field(default_factory=dict)
    """Each retried cell's further attempts, by cell id (see lab.fleet.run._retry_failed)."""

    @property
    def passed(self) -> bool:
        return all(outcome.status is CellStatus.PASS for outcome in self.outcomes)

    @property
    def report(self) -> Path:
        """The HTML page linking every cell's own report."""
        return self.directory / "report.html"


def write_results(result: MatrixResult, matrix: Matrix, workers: int, started: datetime, clock: float) -> None:
    """`clock` is when the matrix started on the monotonic clock the outcomes' times are on."""
    counts = Counter(outcome.status for outcome in result.outcomes)
    run_dirs = [RunDirectory(outcome.run_dir) for outcome in result.outcomes if outcome.run_dir.exists()]
    summary = {"matrix": matrix.name, "file": str(matrix.path), "arch": matrix.arch, "workers": workers,
               "started": started.isoformat(timespec="seconds"), "seconds": round(time.monotonic() - clock, 3),
               "counts": dict(counts), "passed": result.passed,
               "cells": [outcome.to_json(clock) | {"retries": [str(path) for path in
                                                                 result.retries.get(outcome.cell.id, [])]}
                         for outcome in result.outcomes],
               "kernel_phases": summarize_runs(filter(None, (run_dir.read_result() for run_dir in run_dirs)))}
    (result.directory / "matrix.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_matrix_junit(run_dirs, result.directory / "junit.xml")
    write_matrix_report(run_dirs, result.report, _known(result.directory))


def _known(directory: Path) -> dict[Path, str]:
    """The known issues among the matrix's failures; a bad known-issues file is said when the matrix is
    indexed, and labels nothing here."""
    try:
        return known_labels(read_matrix(directory), directory.parent)
    except LabError:
        return {}
