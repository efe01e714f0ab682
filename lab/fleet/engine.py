"""The seam between a matrix and whatever runs its cells: spawned processes here, jobs on a cluster elsewhere.

An engine gets every cell with the options of its run already settled (image, accelerator, PSCI,
run directory) and keeps each cell's `CellOutcome` current; the live table, the summary and the
results read nothing else. However a cell runs, it writes into its run directory, so how its status
and reason are settled from that directory is shared here: the verdict in `result.json`, or the
last words its process left in `output.log`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lab.lines import last_file_lines
from lab.rundir import RunDirectory

if TYPE_CHECKING:
    from lab.fleet.matrix import Cell
    from lab.scenario.run import RunOptions


class CellStatus(StrEnum):
    """Where a cell is: waiting or running, or over with its run's verdict or the engine's account."""

    WAITING = "WAITING"
    RUNNING = "RUNNING"
    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"
    INTERRUPTED = "INTERRUPTED"
    """Stopped by Ctrl-C while it ran."""
    NOT_RUN = "NOT-RUN"
    """An interrupt came before it started."""


@dataclass
class CellOutcome:
    """What became of a cell; `run_dir` exists once the cell has started, `host` is where it ran."""

    cell: Cell
    run_dir: Path
    status: CellStatus = CellStatus.WAITING
    reason: str = ""
    seconds: float = 0.0
    started: float = 0.0
    host: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in (CellStatus.WAITING, CellStatus.RUNNING)

    def start(self, host: str, ago: float = 0.0) -> None:
        """The cell runs on `host` since `ago` seconds (an engine may learn of a start late); its time counts
        from then, on this machine's monotonic clock."""
        self.status, self.started, self.host = CellStatus.RUNNING, time.monotonic() - ago, host

    def end(self, status: CellStatus, reason: str) -> None:
        """The cell is over; one that never started took no time."""
        self.status, self.reason = status, reason
        self.seconds = time.monotonic() - self.started if self.started else 0.0

    def to_json(self, matrix_started: float) -> dict[str, Any]:
        """`start` is in seconds after the matrix started: how the cells overlapped is part of the record."""
        return {"id": self.cell.id, "scenario": self.cell.scenario.name, "kernel": self.cell.kernel,
                "psci": self.cell.psci, "accel": self.cell.accel, "qemu": self.cell.qemu,
                "qemu_host": self.cell.host, "status": self.status, "reason": self.reason,
                "start": round(self.started - matrix_started, 3) if self.started else None,
                "seconds": round(self.seconds, 3), "run_dir": str(self.run_dir) if self.run_dir.exists() else None,
                "host": self.host}


@dataclass(frozen=True)
class CellRun:
    """A cell as an engine gets it: the options its run takes, and the outcome the engine keeps current."""

    outcome: CellOutcome
    options: RunOptions

    @property
    def cell(self) -> Cell:
        return self.outcome.cell


class Engine(Protocol):
    """Runs a matrix's cells: lab.fleet.local.LocalEngine on this machine, lab.fleet.slurm.SlurmEngine as
    Slurm jobs."""

    def run(self, runs: list[CellRun], workers: int, on_finished: Callable[[CellOutcome], None]) -> None:
        """Run every cell, at most `workers` at a time, and return once every one has ended.

        Each outcome is started (`CellOutcome.start`) when its cell starts and ended (`settle` or
        `CellOutcome.end`) when it ends, then handed to `on_finished`. On KeyboardInterrupt: stop
        the cells that run (each keeps its logs), end them without `on_finished`, mark the rest
        NOT-RUN (`mark_not_run`), and re-raise.
        """


def settle(outcome: CellOutcome, reached_verdict: bool, otherwise: str) -> None:
    """End a cell whose process ended on its own, from what it left in its run directory.

    A process that reached a verdict (the lab's exit status 0 or 1) leaves it in result.json. Any
    other is an ERROR whose reason is its last words in output.log (a `lab: error: …` line), or
    `otherwise`, the engine's own account, when it left none.
    """
    run_dir = RunDirectory(outcome.run_dir)
    result = run_dir.read_result() if reached_verdict else None
    if result is not None:
        outcome.end(CellStatus(result["verdict"]["status"]), result["verdict"]["reason"])
    else:
        last_words = " ".join(last_file_lines(run_dir.output_log)).removeprefix("lab: error: ")
        outcome.end(CellStatus.ERROR, last_words or otherwise)


def mark_not_run(outcomes: list[CellOutcome]) -> None:
    """Cells an interrupt came before: they never started, and the record says so."""
    for outcome in outcomes:
        outcome.end(CellStatus.NOT_RUN, "interrupted before it started")
