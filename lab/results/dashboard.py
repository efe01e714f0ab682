"""`lab dashboard`: one static page of a matrix's nights, from the results store.

On top, the regressions still active and the failures a known issue explains; then a grid of cells
by nights, each square coloured by its status with the first power-off's class, linking to the
run's report; then each cell's hibernate and resume times across the nights as small SVG plots.
No JavaScript: the SVG is drawn here (a charting library such as pygal embeds a script in every
chart), and the page opens offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from lab.results.compare import by_cell
from lab.results.history import FlakeRate, RegressionRecord, flake_rates, nights_of, regression_records
from lab.results.known import KnownIssue, known_issue
from lab.results.record import RunRecord, Status

PLOT_WIDTH, PLOT_HEIGHT, PLOT_MARGIN = 480, 90, 4
_TEMPLATES = Environment(loader=PackageLoader("lab.results"), autoescape=True, undefined=StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True)


@dataclass(frozen=True)
class Square:
    """One cell on one night: `state` is PASS, FAIL, ERROR, FLAKY or KNOWN (a failure a known issue explains)."""

    state: str
    kind: str
    link: str
    title: str


@dataclass(frozen=True)
class Plot:
    """A cell's times across the nights as SVG polylines, one per measure, scaled to the largest value."""

    cell: str
    lines: dict[str, str]
    top: float


@dataclass(frozen=True)
class KnownFailure:
    cell: str
    night: str
    issue: KnownIssue


@dataclass
class Dashboard:
    matrix: str
    nights: list[str]
    cells: list[str]
    grid: dict[str, dict[str, Square]]
    regressions: list[RegressionRecord]
    known: list[KnownFailure]
    flakes: list[FlakeRate]
    plots: list[Plot]


def _square(record: RunRecord, flaky: bool, issue: KnownIssue | None, out_dir: Path) -> Square:
    state = "FLAKY" if flaky else "KNOWN" if issue is not None else str(record.status)
    kind = record.classes[0].partition(":")[2] if record.classes else ""
    report = Path(record.run_dir) / "report.html"
    title = f"{record.cell} {record.night}: {record.status} {record.reason}"
    return Square(state, kind, os.path.relpath(report, out_dir), title + (f" [known: {issue.id}]" if issue else ""))


def _polyline(values: list[float | None], top: float) -> str:
    step = (PLOT_WIDTH - 2 * PLOT_MARGIN) / max(len(values) - 1, 1)
    usable = PLOT_HEIGHT - 2 * PLOT_MARGIN
    return " ".join(f"{PLOT_MARGIN + index * step:.1f},{PLOT_HEIGHT - PLOT_MARGIN - value / top * usable:.1f}"
                    for index, value in enumerate(values) if value is not None)


def _plot(cell: str, finals: list[RunRecord | None]) -> Plot:
    series = {"hibernate": [r.hibernate_seconds if r else None for r in finals],
              "resume": [r.resume_seconds if r else None for r in finals],
              "kernel-hibernate": [r.kernel_timings.get("hibernate_seconds") if r else None for r in finals],
              "kernel-restore": [r.kernel_timings.get("restore_seconds") if r else None for r in finals]}
    top = max((value for values in series.values() for value in values if value is not None), default=0.0) or 1.0
    return Plot(cell, {name: _polyline(values, top) for name, values in series.items()}, top)


def build_dashboard(matrix: str, history: list[RunRecord], issues: list[KnownIssue], out: Path,
                    last_nights: int) -> Dashboard:
    nights = nights_of(history)[-last_nights:]
    names = [name for name, _ in nights]
    grid: dict[str, dict[str, Square]] = {}
    finals: dict[str, dict[str, RunRecord]] = {}
    known: list[KnownFailure] = []
    for name, records in nights:
        for cell, runs in by_cell(records).items():
            issue = known_issue(runs.final, issues) if runs.final.status != Status.PASS else None
            grid.setdefault(cell, {})[name] = _square(runs.final, runs.flaky, issue, out.parent)
            finals.setdefault(cell, {})[name] = runs.final
            if issue is not None and name == names[-1]:
                known.append(KnownFailure(cell, name, issue))
    cells = sorted(grid)
    regressions = [record for record in regression_records(history, issues) if record.active]
    return Dashboard(matrix, names, cells, grid, regressions, known, flake_rates(history),
                     [_plot(cell, [finals[cell].get(name) for name in names]) for cell in cells])


def write_dashboard(dashboard: Dashboard, out: Path) -> None:
    page = _TEMPLATES.get_template("dashboard.html.j2").render(
        board=dashboard, width=PLOT_WIDTH, height=PLOT_HEIGHT)
    out.write_text(page)
