"""The local engine: a matrix's cells in spawned processes on this machine, a few at a time.

Every cell runs in a spawned process of its own rather than a thread: QEMU is told to die with
the thread that launched it (PR_SET_PDEATHSIG), and an interrupt must reach each run's own
clean-up, which reaps its QEMU and keeps its logs.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from lab import logs
from lab.errors import UsageError
from lab.fleet.cell import INTERRUPTED_EXIT, handle_interrupts, redirect_output, run_cell
from lab.fleet.engine import CellOutcome, CellRun, CellStatus, mark_not_run, settle
from lab.fleet.matrix import Cell
from lab.machine.process import set_parent_death_signal
from lab.scenario.model import Scenario
from lab.scenario.run import RunOptions

STOP_GRACE_SECONDS = 60.0
_STOPPED_BY_SIGNAL = {-signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL}


def _run_cell(cell: Cell, options: RunOptions, parent: int) -> None:
    """A worker process: one cell's run, which must not start once the matrix that spawned it is gone."""
    set_parent_death_signal(signal.SIGTERM)
    handle_interrupts()
    logs.configure()
    if options.run_dir is None:
        raise UsageError(f"cell {cell.id} has no run directory")
    redirect_output(options.run_dir)

    def scenario() -> Scenario:
        if os.getppid() != parent:
            raise KeyboardInterrupt
        return cell.scenario

    sys.exit(run_cell(scenario, options))


def _settle(outcome: CellOutcome, exit_code: int | None) -> None:
    """A worker stopped by an interrupt is INTERRUPTED; any other ended on its own."""
    if exit_code == INTERRUPTED_EXIT or exit_code in _STOPPED_BY_SIGNAL:
        outcome.end(CellStatus.INTERRUPTED, "interrupted")
    else:
        settle(outcome, reached_verdict=exit_code in (0, 1), otherwise=f"worker exited with status {exit_code}")


def _stop(running: dict[int, tuple[BaseProcess, CellOutcome]]) -> None:
    """Ask every worker to stop (each reaps its QEMU and writes its logs), wait, then kill what is left."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process, _ in running.values():
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process, outcome in running.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()
            _settle(outcome, process.exitcode)
        running.clear()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class LocalEngine:
    """Each cell in a spawned process of its own on this machine; see the module docstring for why."""

    def __init__(self) -> None:
        self.host = socket.gethostname()

    def run(self, runs: list[CellRun], workers: int, on_finished: Callable[[CellOutcome], None]) -> None:
        spawn = multiprocessing.get_context("spawn")
        waiting = deque(runs)
        running: dict[int, tuple[BaseProcess, CellOutcome]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < workers:
                    run = waiting.popleft()
                    run.outcome.run_dir.mkdir(parents=True)
                    process: BaseProcess = spawn.Process(target=_run_cell, args=(run.cell, run.options, os.getpid()),
                                            name=run.cell.id, daemon=True)
                    run.outcome.start(self.host)
                    process.start()
                    running[process.sentinel] = (process, run.outcome)
                ended = set(multiprocessing.connection.wait(list(running), timeout=1.0))
                for sentinel in [sentinel for sentinel in running if sentinel in ended]:
                    process, outcome = running.pop(sentinel)
                    process.join()
                    _settle(outcome, process.exitcode)
                    on_finished(outcome)
        except KeyboardInterrupt:
            _stop(running)
            mark_not_run([run.outcome for run in waiting])
            raise
