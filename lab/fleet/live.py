"""What a matrix shows on the terminal: a live table while its cells run, a line per cell as it ends, a summary.

Everything here is read from the cells' outcomes and their run directories, never from an engine,
so it shows cells the same way whichever engine runs them.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from lab.events import StepEnded, StepStarted
from lab.fleet.engine import CellOutcome, CellStatus
from lab.fleet.results import MatrixResult
from lab.rundir import RunDirectory

_STYLES = {CellStatus.PASS: "green", CellStatus.FAIL: "red", CellStatus.ERROR: "red",
           CellStatus.INTERRUPTED: "yellow", CellStatus.RUNNING: "cyan", CellStatus.WAITING: "dim",
           CellStatus.NOT_RUN: "dim"}


def _current_step(run_dir: Path) -> str:
    """The step a running cell is in, from the event stream its run writes."""
    for event in reversed(RunDirectory(run_dir).read_events()):
        if isinstance(event, StepStarted):
            return event.label
        if isinstance(event, StepEnded):
            return f"after {event.step}"
    return "starting"


def _status(status: CellStatus) -> str:
    return f"[{_STYLES[status]}]{status}[/]"


def _progress(outcomes: list[CellOutcome]) -> Table:
    done = sum(outcome.finished for outcome in outcomes)
    failed = sum(outcome.finished and outcome.status is not CellStatus.PASS for outcome in outcomes)
    table = Table(title=f"{done}/{len(outcomes)} cells done, {failed} not passed", title_justify="left")
    for column in ("cell", "status", "step", "time"):
        table.add_column(column, justify="right" if column == "time" else "left")
    now = time.monotonic()
    for outcome in outcomes:
        running = outcome.status is CellStatus.RUNNING
        step = _current_step(outcome.run_dir) if running else outcome.reason
        seconds = now - outcome.started if running else outcome.seconds
        table.add_row(escape(outcome.cell.id), _status(outcome.status), escape(step),
                      f"{seconds:.0f}s" if outcome.started else "")
    return table


def live_table(console: Console, outcomes: list[CellOutcome]) -> Live:
    """Every cell with its status and, while it runs, its current step; gone from the terminal once closed."""
    return Live(console=console, transient=True, get_renderable=lambda: _progress(outcomes))


def finished_line(outcome: CellOutcome) -> str:
    """The line printed above the live table as a cell ends."""
    return f"{_status(outcome.status)} {escape(outcome.cell.id)}  {outcome.seconds:.1f}s  {escape(outcome.reason)}"


def _summary(outcomes: list[CellOutcome]) -> Table:
    table = Table(title="matrix summary", title_justify="left")
    for column in ("cell", "status", "time", "reason"):
        table.add_column(column, justify="right" if column == "time" else "left", overflow="fold")
    for outcome in outcomes:
        table.add_row(escape(outcome.cell.id), _status(outcome.status), f"{outcome.seconds:.1f}s",
                      escape(outcome.reason))
    return table


def print_summary(console: Console, name: str, result: MatrixResult, seconds: float) -> None:
    """Every cell's status, time and reason, then one line: the matrix passed or not, its counts, its report."""
    console.print(_summary(result.outcomes))
    counts = Counter(outcome.status for outcome in result.outcomes)
    shown = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    where = escape(f"[{seconds:.1f}s, {result.report}]")
    console.print(f"{_status(CellStatus.PASS if result.passed else CellStatus.FAIL)} {name}: {shown}  {where}")
