"""Matrix runs: every scenario on every kernel, PSCI personality and accelerator, a few at a time.

Every cell runs in a spawned process of its own rather than a thread: QEMU is told to die with
the thread that launched it (PR_SET_PDEATHSIG), and an interrupt must reach each run's own
clean-up, which reaps its QEMU and keeps its logs. Images are prepared once, before any worker
starts, so that workers never race to build the same image.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import jsonschema
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from lab.errors import LabError, UsageError
from lab.events import StepEnded, StepStarted
from lab.image.guest_image import GuestImage
from lab.image.recipe import DEFAULT_IMAGE, DEFAULT_KERNEL
from lab.image.store import find_image
from lab.machine.process import set_parent_death_signal
from lab.paths import load_schema
from lab.report.html import write_matrix_report
from lab.report.junit import write_matrix_junit
from lab.report.terminal import TerminalReport
from lab.rundir import RunDirectory, timestamp, unique_dir
from lab.scenario.model import Scenario, find_scenario
from lab.scenario.run import RunOptions, run_scenario
from lab.scenario.yaml_file import read_yaml, schema_message
from lab.vocabulary import guest_arch

_SCHEMA = load_schema("matrix")
INTERRUPTED_EXIT = 130
STOP_GRACE_SECONDS = 60.0
_STOPPED_BY_SIGNAL = {-signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL}
_PATTERN_HINTS = {"kernels": "is neither `default` nor a Debian kernel as linux-image-…=VERSION",
                  "name": "is not a name of lower-case letters, digits and dashes"}
_STYLES = {"PASS": "green", "FAIL": "red", "ERROR": "red", "INTERRUPTED": "yellow", "RUNNING": "cyan",
           "WAITING": "dim", "NOT-RUN": "dim"}


@dataclass(frozen=True)
class Cell:
    """One run of a matrix: a scenario on one kernel, with the PSCI and accelerator overrides (None: none)."""

    scenario: Scenario
    kernel: str = DEFAULT_KERNEL
    psci: str | None = None
    accel: str | None = None

    @property
    def id(self) -> str:
        """`hibernate-resume[kernel=default,psci=kvm]`: the scenario and the dimensions the matrix sets."""
        dimensions = {"kernel": self.kernel, "psci": self.psci, "accel": self.accel}
        return f"{self.scenario.name}[{','.join(f'{k}={v}' for k, v in dimensions.items() if v is not None)}]"

    @property
    def dir_name(self) -> str:
        """The id as a directory name that needs no quoting in a shell."""
        return re.sub(r"[^A-Za-z0-9.+=_-]+", ".", self.id).strip(".")


@dataclass(frozen=True)
class Dimensions:
    """What a matrix varies besides the scenario; None stands for "the scenario's own" or "the best one"."""

    kernels: tuple[str, ...] = (DEFAULT_KERNEL,)
    personalities: tuple[str | None, ...] = (None,)
    accelerators: tuple[str | None, ...] = (None,)

    def cells(self, scenario: Scenario) -> list[Cell]:
        return [Cell(scenario, kernel, psci, accel)
                for kernel, psci, accel in itertools.product(self.kernels, self.personalities, self.accelerators)]


@dataclass(frozen=True)
class Matrix:
    """A matrix file, read and validated: its scenarios (loaded) and what varies over them."""

    name: str
    path: Path
    scenarios: tuple[Scenario, ...]
    dimensions: Dimensions
    arch: str = "arm64"
    workers: int = 1

    def cells(self) -> list[Cell]:
        return [cell for scenario in self.scenarios for cell in self.dimensions.cells(scenario)]


def _scenario_reference(entry: str, base: Path) -> str:
    """Scenario files in a matrix are relative to the matrix file; bare names are shipped scenarios."""
    if Path(entry).suffix in (".yaml", ".yml") or "/" in entry:
        return str(base / entry)
    return entry


def load_matrix(path: Path) -> Matrix:
    """Read and validate a matrix file; every error names the file, the line and the field."""
    file = read_yaml(path, "matrix")
    file.validate(_SCHEMA, _PATTERN_HINTS)
    data = file.data
    arch = data.get("arch", "arm64")
    scenarios: list[Scenario] = []
    for index, entry in enumerate(data["scenarios"]):
        try:
            scenario = find_scenario(_scenario_reference(entry, path.parent))
        except UsageError as problem:
            raise file.error(("scenarios", index), str(problem)) from None
        if any(known.name == scenario.name for known in scenarios):
            raise file.error(("scenarios", index), f"scenario {scenario.name} is listed twice")
        if scenario.arches and guest_arch(arch) not in {guest_arch(known) for known in scenario.arches}:
            raise file.error(("scenarios", index),
                             f"scenario {scenario.name} is for {', '.join(scenario.arches)} guests only, not {arch}")
        scenarios.append(scenario)
    return Matrix(
        name=data.get("name", path.stem),
        path=path,
        scenarios=tuple(scenarios),
        dimensions=Dimensions(
            kernels=tuple(data["kernels"]),
            personalities=tuple(data.get("personalities", (None,))),
            accelerators=tuple(data.get("accelerators", (None,))),
        ),
        arch=arch,
        workers=data.get("workers", 1),
    )


def check_dimension(name: str, value: Any, given_as: str) -> None:
    """Validate a field given outside a matrix file (a command-line option) as the schema would in one."""
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(_SCHEMA["properties"][name]).iter_errors(value))
    if error is not None:
        raise UsageError(f"{given_as}: {schema_message(error, name, _PATTERN_HINTS)}")


def image_name(scenario: Scenario, arch: str) -> str:
    """The image recipe a cell boots; its kernel dimension replaces that image's kernel."""
    return scenario.image or DEFAULT_IMAGE[guest_arch(arch).debian]


@dataclass
class CellOutcome:
    """What became of a cell; `run_dir` exists once the cell has started."""

    cell: Cell
    run_dir: Path
    status: str = "WAITING"
    reason: str = ""
    seconds: float = 0.0
    started: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status not in ("WAITING", "RUNNING")

    def to_json(self, matrix_started: float) -> dict[str, Any]:
        """`start` is in seconds after the matrix started: how the cells overlapped is part of the record."""
        return {"id": self.cell.id, "scenario": self.cell.scenario.name, "kernel": self.cell.kernel,
                "psci": self.cell.psci, "accel": self.cell.accel, "status": self.status, "reason": self.reason,
                "start": round(self.started - matrix_started, 3) if self.started else None,
                "seconds": round(self.seconds, 3), "run_dir": str(self.run_dir) if self.run_dir.exists() else None}


@dataclass
class MatrixResult:
    """The matrix directory and every cell's outcome, in the order the matrix file gives them."""

    directory: Path
    outcomes: list[CellOutcome] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(outcome.status == "PASS" for outcome in self.outcomes)


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


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _settle(outcome: CellOutcome, exit_code: int | None) -> None:
    """Status and reason from the run's result.json, or from the worker's last words when it has none."""
    outcome.seconds = time.monotonic() - outcome.started
    result = RunDirectory(outcome.run_dir).read_result()
    if exit_code == INTERRUPTED_EXIT or exit_code in _STOPPED_BY_SIGNAL:
        outcome.status, outcome.reason = "INTERRUPTED", "interrupted"
    elif result is not None and exit_code in (0, 1):
        outcome.status, outcome.reason = result["verdict"]["status"], result["verdict"]["reason"]
    else:
        outcome.status = "ERROR"
        outcome.reason = (_last_line(RunDirectory(outcome.run_dir).output_log).removeprefix("lab: error: ")
                          or f"worker exited with status {exit_code}")


def _current_step(run_dir: Path) -> str:
    """The step a running cell is in, from the event stream its run writes."""
    for event in reversed(RunDirectory(run_dir).read_events()):
        if isinstance(event, StepStarted):
            return event.label
        if isinstance(event, StepEnded):
            return f"after {event.step}"
    return "starting"


def _status(status: str) -> str:
    return f"[{_STYLES.get(status, 'bold')}]{status}[/]"


def _progress(outcomes: list[CellOutcome]) -> Table:
    done = sum(outcome.finished for outcome in outcomes)
    failed = sum(outcome.finished and outcome.status != "PASS" for outcome in outcomes)
    table = Table(title=f"{done}/{len(outcomes)} cells done, {failed} not passed", title_justify="left")
    for column in ("cell", "status", "step", "time"):
        table.add_column(column, justify="right" if column == "time" else "left")
    now = time.monotonic()
    for outcome in outcomes:
        running = outcome.status == "RUNNING"
        step = _current_step(outcome.run_dir) if running else outcome.reason
        seconds = now - outcome.started if running else outcome.seconds
        table.add_row(escape(outcome.cell.id), _status(outcome.status), escape(step),
                      f"{seconds:.0f}s" if outcome.started else "")
    return table


def _summary(outcomes: list[CellOutcome]) -> Table:
    table = Table(title="matrix summary", title_justify="left")
    for column in ("cell", "status", "time", "reason"):
        table.add_column(column, justify="right" if column == "time" else "left", overflow="fold")
    for outcome in outcomes:
        table.add_row(escape(outcome.cell.id), _status(outcome.status), f"{outcome.seconds:.1f}s",
                      escape(outcome.reason))
    return table


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


def _run_cells(outcomes: list[CellOutcome], options: Callable[[CellOutcome], RunOptions], workers: int,
               console: Console) -> None:
    """At most `workers` cells at a time, each in a spawned process; one line per cell as it ends."""
    spawn = multiprocessing.get_context("spawn")
    waiting = deque(outcomes)
    running: dict[int, tuple[BaseProcess, CellOutcome]] = {}
    with Live(console=console, transient=True, get_renderable=lambda: _progress(outcomes)) as live:
        try:
            while waiting or running:
                while waiting and len(running) < workers:
                    outcome = waiting.popleft()
                    outcome.run_dir.mkdir(parents=True)
                    process = spawn.Process(target=_run_cell, args=(outcome.cell, options(outcome), os.getpid()),
                                            name=outcome.cell.id, daemon=True)
                    outcome.status, outcome.started = "RUNNING", time.monotonic()
                    process.start()
                    running[process.sentinel] = (process, outcome)
                for sentinel in multiprocessing.connection.wait(list(running), timeout=1.0):
                    process, outcome = running.pop(sentinel)
                    process.join()
                    _settle(outcome, process.exitcode)
                    live.console.print(f"{_status(outcome.status)} {escape(outcome.cell.id)}  "
                                       f"{outcome.seconds:.1f}s  {escape(outcome.reason)}")
        except KeyboardInterrupt:
            _stop(running)
            for outcome in waiting:
                outcome.status, outcome.reason = "NOT-RUN", "interrupted before it started"
            raise


def _write_results(result: MatrixResult, matrix: Matrix, workers: int, started: datetime, clock: float) -> None:
    counts = Counter(outcome.status for outcome in result.outcomes)
    summary = {"matrix": matrix.name, "file": str(matrix.path), "arch": matrix.arch, "workers": workers,
               "started": started.isoformat(timespec="seconds"), "seconds": round(time.monotonic() - clock, 3),
               "counts": dict(counts), "passed": result.passed,
               "cells": [outcome.to_json(clock) for outcome in result.outcomes]}
    (result.directory / "matrix.json").write_text(json.dumps(summary, indent=2) + "\n")
    run_dirs = [RunDirectory(outcome.run_dir) for outcome in result.outcomes if outcome.run_dir.exists()]
    write_matrix_junit(run_dirs, result.directory / "junit.xml")
    write_matrix_report(run_dirs, result.directory / "report.html")


def run_matrix(matrix: Matrix, runs_root: Path, workers: int, console: Console) -> MatrixResult:
    """Prepare the images, run every cell, write matrix.json, junit.xml and report.html; re-raises an interrupt."""
    cells = matrix.cells()
    images: dict[tuple[str, str], GuestImage] = {}
    for cell in cells:
        key = (image_name(cell.scenario, matrix.arch), cell.kernel)
        if key not in images:
            console.print(escape(f"image {key[0]} with kernel {key[1]}"))
            images[key] = find_image(*key, log=lambda line: console.print(escape(f"  {line}")))
    result = MatrixResult(unique_dir(runs_root, f"{matrix.name}-{timestamp()}"))
    result.outcomes = [CellOutcome(cell, result.directory / cell.dir_name) for cell in cells]
    workers = min(workers, len(cells))
    console.print(f"[bold]{matrix.name}[/]: {len(cells)} cells, {workers} at a time, in "
                  f"{escape(str(result.directory))}")

    def options(outcome: CellOutcome) -> RunOptions:
        image = images[(image_name(outcome.cell.scenario, matrix.arch), outcome.cell.kernel)]
        return RunOptions(arch=matrix.arch, image=str(image.path), accel=outcome.cell.accel, psci=outcome.cell.psci,
                          run_dir=outcome.run_dir)

    started, clock = datetime.now(UTC), time.monotonic()
    try:
        _run_cells(result.outcomes, options, workers, console)
    finally:
        _write_results(result, matrix, workers, started, clock)
        console.print(_summary(result.outcomes))
        counts = Counter(outcome.status for outcome in result.outcomes)
        shown = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        where = escape(f"[{time.monotonic() - clock:.1f}s, {result.directory / 'report.html'}]")
        console.print(f"{_status('PASS' if result.passed else 'FAIL')} {matrix.name}: {shown}  {where}")
    return result
