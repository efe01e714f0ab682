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

from rich.console import Console

from lab.errors import LabError
from lab.fleet.engine import CellOutcome, CellRun, mark_not_run, settle
from lab.fleet.matrix import Cell
from lab.machine.process import set_parent_death_signal
from lab.report.terminal import TerminalReport
from lab.rundir import RunDirectory
from lab.scenario.run import RunOptions, run_scenario

INTERRUPTED_EXIT = 130
STOP_GRACE_SECONDS = 60.0
_STOPPED_BY_SIGNAL = {-signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL}


def _interrupt(signum: int, frame: object) -> None:
    """The first SIGINT or SIGTERM stops the run; later ones must not cut its clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _run_cell(cell: Cell, options: RunOptions, parent: int) -> None:
    """A worker process: one cell's run; what `lab scenario` would print goes to the run's output.log."""
    set_parent_death_signal(signal.SIGTERM)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    assert options.run_dir is not None
    with RunDirectory(options.run_dir).output_log.open("a") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
    sys.stdout.reconfigure(line_buffering=True)
    try:
        if os.getppid() != parent:
            raise KeyboardInterrupt
        report = TerminalReport(Console(file=sys.stdout, highlight=False, soft_wrap=True))
        result = run_scenario(cell.scenario, options, [report])
        report.verdict(result.verdict, result.run_dir, result.seconds)
        sys.exit(0 if result.verdict.passed else 1)
    except LabError as error:
        print(f"lab: error: {error}")
        sys.exit(2)
    except KeyboardInterrupt:
        print("lab: interrupted; QEMU stopped and logs kept")
        sys.exit(INTERRUPTED_EXIT)


def _settle(outcome: CellOutcome, exit_code: int | None) -> None:
    """A worker stopped by an interrupt is INTERRUPTED; any other ended on its own."""
    if exit_code == INTERRUPTED_EXIT or exit_code in _STOPPED_BY_SIGNAL:
        outcome.end("INTERRUPTED", "interrupted")
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
                    process = spawn.Process(target=_run_cell, args=(run.cell, run.options, os.getpid()),
                                            name=run.cell.id, daemon=True)
                    run.outcome.start(self.host)
                    process.start()
                    running[process.sentinel] = (process, run.outcome)
                for sentinel in multiprocessing.connection.wait(list(running), timeout=1.0):
                    process, outcome = running.pop(sentinel)
                    process.join()
                    _settle(outcome, process.exitcode)
                    on_finished(outcome)
        except KeyboardInterrupt:
            _stop(running)
            mark_not_run([run.outcome for run in waiting])
            raise
