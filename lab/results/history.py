"""A matrix's history: regressions as records, and each cell's flake rate.

A regression record opens on the night a cell regresses (as `lab compare` judges it) and stays
active until the cell passes again with the power-off classes of its last passing run. It keeps the
first failing run, the last passing run and, once closed, the run that fixed it.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from lab.results.compare import CellRuns, Change, by_cell, compare
from lab.results.known import KnownIssue
from lab.results.record import RunRecord, Status


@dataclass
class RegressionRecord:
    matrix: str | None
    cell: str
    what: list[str]
    first_failing: RunRecord
    last_passing: RunRecord
    fixed_by: RunRecord | None = None
    known: KnownIssue | None = None
    nights_failing: int = 1

    @property
    def active(self) -> bool:
        return self.fixed_by is None

    def to_json(self) -> dict[str, Any]:
        return {"matrix": self.matrix, "cell": self.cell, "what": self.what, "active": self.active,
                "first_failing": self.first_failing.run_dir, "first_failing_night": self.first_failing.night,
                "last_passing": self.last_passing.run_dir, "last_passing_night": self.last_passing.night,
                "fixed_by": self.fixed_by.run_dir if self.fixed_by else None, "nights_failing": self.nights_failing,
                "known": self.known.to_json() if self.known else None}


SINGLE_RUNS = "single-runs"
"""The matrix that runs outside any matrix belong to, one night per UTC day: how the nightly service runs them."""


def as_nights(single_runs: list[RunRecord]) -> list[RunRecord]:
    """Runs outside a matrix as nights of SINGLE_RUNS: those of one UTC day are one night, and a scenario
    run twice that day is one cell run twice (a failure, then a pass, is flaky)."""
    return [replace(record, matrix=SINGLE_RUNS, night=f"{SINGLE_RUNS}-{record.started[:10]}")
            for record in single_runs]


def nights_of(records: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """A matrix's records grouped by night, oldest first."""
    grouped: dict[str, list[RunRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.started, r.night or "")):
        grouped[record.night or record.run_dir].append(record)
    return list(grouped.items())


def _healed(runs: CellRuns, baseline: RunRecord) -> bool:
    return runs.final.status == Status.PASS and runs.final.classes == baseline.classes


def regression_records(records: list[RunRecord], issues: list[KnownIssue]) -> list[RegressionRecord]:
    """Every regression of a matrix's history, oldest first, with whether it is still active."""
    nights = nights_of(records)
    found: list[RegressionRecord] = []
    active: dict[str, RegressionRecord] = {}
    for (old_name, old), (new_name, new) in itertools.pairwise(nights):
        new_cells = by_cell(new)
        for cell, record in list(active.items()):
            runs = new_cells.get(cell)
            if runs is None or runs.final.status == Status.ERROR:
                continue
            if _healed(runs, record.last_passing):
                record.fixed_by = runs.final
                del active[cell]
            else:
                record.nights_failing += 1
        for item in compare(old_name, old, new_name, new, issues).of(Change.REGRESSION):
            if item.cell in active or item.old is None:
                continue
            opened = RegressionRecord(item.new.matrix, item.cell, item.what, item.new, item.old, known=item.known)
            found.append(opened)
            active[item.cell] = opened
    return found


@dataclass(frozen=True)
class FlakeRate:
    cell: str
    nights: int
    flaky: int

    @property
    def rate(self) -> float:
        return self.flaky / self.nights if self.nights else 0.0


def flake_rates(records: list[RunRecord]) -> list[FlakeRate]:
    """Per cell: on how many nights it ran, and on how many it failed and then passed on a retry."""
    nights: dict[str, int] = defaultdict(int)
    flaky: dict[str, int] = defaultdict(int)
    for _, night in nights_of(records):
        for cell, runs in by_cell(night).items():
            nights[cell] += 1
            flaky[cell] += runs.flaky
    return [FlakeRate(cell, nights[cell], flaky[cell]) for cell in sorted(nights)]
