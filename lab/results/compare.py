"""Two nights (or two runs) side by side: what regressed, what was fixed, what still fails, what is new.

A regression is a cell that went from PASS to FAIL, a power-off whose class changed, or a finding
that was not there before. A cell that failed and then passed on a retry is flaky, not a regression;
an ERROR is the lab's or its infrastructure's failure, not the guest's, and is listed apart. A
regression that matches a known issue is labelled known and does not count. Each regression says
which of its run's inputs changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lab.errors import UsageError
from lab.results.known import KnownIssue, known_issue
from lab.results.record import RunRecord, Status


class Change(StrEnum):
    REGRESSION = "regression"
    FIXED = "fixed"
    STILL_FAILING = "still-failing"
    NEW_CELL = "new-cell"
    FLAKY = "flaky"
    ERROR = "error"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class CellRuns:
    """A cell's attempts in one night, first to last: the last decides, a failure then a pass is flaky."""

    cell: str
    attempts: tuple[RunRecord, ...]

    @property
    def final(self) -> RunRecord:
        return self.attempts[-1]

    @property
    def flaky(self) -> bool:
        return self.final.status == Status.PASS and any(a.status == Status.FAIL for a in self.attempts[:-1])


def by_cell(records: list[RunRecord]) -> dict[str, CellRuns]:
    cells: dict[str, list[RunRecord]] = {}
    for record in sorted(records, key=lambda r: r.attempt):
        cells.setdefault(record.cell, []).append(record)
    return {cell: CellRuns(cell, tuple(attempts)) for cell, attempts in cells.items()}


@dataclass
class CellChange:
    cell: str
    change: Change
    new: RunRecord
    old: RunRecord | None = None
    what: list[str] = field(default_factory=list)
    """PASS→FAIL, `boot1 class hibernate-off2 → hibernate-off`, `new finding: …`."""
    differed: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    known: KnownIssue | None = None

    def to_json(self) -> dict[str, Any]:
        return {"cell": self.cell, "change": str(self.change), "what": self.what,
                "old": self.old.run_dir if self.old else None, "new": self.new.run_dir,
                "status": str(self.new.status), "reason": self.new.reason,
                "differed": {name: {"old": old, "new": new} for name, (old, new) in self.differed.items()},
                "known": self.known.to_json() if self.known else None}


def _regressed(old: RunRecord, new: RunRecord) -> list[str]:
    what = [f"{old.status}→{new.status}"] if old.status == Status.PASS and new.status == Status.FAIL else []
    old_classes = dict(entry.partition(":")[::2] for entry in old.classes)
    for boot, kind in (entry.partition(":")[::2] for entry in new.classes):
        if boot in old_classes and old_classes[boot] != kind:
            what.append(f"{boot} class {old_classes[boot]} → {kind}")
    what.extend(f"new finding: {finding}" for finding in new.findings if finding not in old.findings)
    return what


def _differed(old: RunRecord, new: RunRecord) -> dict[str, tuple[str | None, str | None]]:
    before, after = old.changed_inputs, new.changed_inputs
    return {name: (before[name], after[name]) for name in after if before[name] != after[name]}


def _change(old_runs: CellRuns | None, new_runs: CellRuns) -> CellChange:
    new = new_runs.final
    if new.status == Status.ERROR:
        return CellChange(new_runs.cell, Change.ERROR, new, old_runs.final if old_runs else None, [new.reason])
    if new_runs.flaky:
        return CellChange(new_runs.cell, Change.FLAKY, new, old_runs.final if old_runs else None,
                          [f"failed, then passed on attempt {len(new_runs.attempts)}"])
    if old_runs is None:
        return CellChange(new_runs.cell, Change.NEW_CELL, new)
    old = old_runs.final
    if old.status != Status.PASS and new.status == Status.PASS:
        return CellChange(new_runs.cell, Change.FIXED, new, old, [f"{old.status}→PASS"], _differed(old, new))
    if regressed := _regressed(old, new):
        return CellChange(new_runs.cell, Change.REGRESSION, new, old, regressed, _differed(old, new))
    if new.status == Status.FAIL:
        kind = Change.STILL_FAILING if old.status == Status.FAIL else Change.REGRESSION
        return CellChange(new_runs.cell, kind, new, old, [new.reason], _differed(old, new))
    return CellChange(new_runs.cell, Change.UNCHANGED, new, old)


@dataclass
class Comparison:
    old: str
    new: str
    changes: list[CellChange]

    def of(self, change: Change) -> list[CellChange]:
        return [item for item in self.changes if item.change == change]

    @property
    def regressed(self) -> bool:
        """Something regressed that no known issue explains."""
        return any(item.known is None for item in self.of(Change.REGRESSION))

    def to_json(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "regressed": self.regressed,
                "changes": [item.to_json() for item in self.changes if item.change != Change.UNCHANGED]}


def compare(old_name: str, old: list[RunRecord], new_name: str, new: list[RunRecord],
            issues: list[KnownIssue]) -> Comparison:
    """Compare two nights of one matrix (or two runs of one scenario); different matrices are a usage error."""
    old_matrices, new_matrices = {r.matrix for r in old}, {r.matrix for r in new}
    if old_matrices != new_matrices:
        raise UsageError(f"{old_name} and {new_name} are runs of different matrices "
                         f"({', '.join(map(str, old_matrices))} and {', '.join(map(str, new_matrices))})")
    if new_matrices == {None} and len(old) == len(new) == 1 and old[0].scenario != new[0].scenario:
        raise UsageError(f"{old_name} and {new_name} are runs of different scenarios")
    old_cells = by_cell(old)
    changes = [_change(old_cells.get(cell), runs) for cell, runs in by_cell(new).items()]
    for item in changes:
        if item.change in (Change.REGRESSION, Change.STILL_FAILING, Change.NEW_CELL, Change.ERROR):
            item.known = known_issue(item.new, issues)
    return Comparison(old_name, new_name, changes)


def render(comparison: Comparison) -> list[str]:
    """The comparison for a terminal: regressions first, each with what changed around it."""
    lines = [f"compare {comparison.old} → {comparison.new}"]
    titles = [(Change.REGRESSION, "regressions"), (Change.ERROR, "errors (the lab's or its infrastructure's)"),
              (Change.FLAKY, "flaky"), (Change.STILL_FAILING, "still failing"), (Change.FIXED, "fixed"),
              (Change.NEW_CELL, "new cells")]
    for change, title in titles:
        items = comparison.of(change)
        if not items:
            continue
        lines.append(f"{title} ({len(items)}):")
        for item in items:
            label = f"  [known: {item.known.id}]" if item.known else ""
            lines.append(f"  {item.cell}: {'; '.join(item.what) or item.new.status}{label}")
            lines.extend(f"    {name} {old} → {new}" for name, (old, new) in item.differed.items())
            if item.known:
                lines.append(f"    known issue {item.known.link}: {item.known.advice}")
    unchanged = len(comparison.of(Change.UNCHANGED))
    counted = [item for item in comparison.of(Change.REGRESSION) if item.known is None]
    lines.append(f"{len(counted)} new regression(s), {unchanged} cell(s) unchanged")
    return lines
