"""One cell's run in a process of its own, however an engine starts it: a spawned worker or a Slurm job.

Both engines settle a cell from the same things: its exit status (0 or 1: a verdict in result.json; 2: a
set-up error whose `lab: error: …` line ends output.log; 130: interrupted) and what it printed, which
goes to the run directory's output.log. `lab cell SPEC` runs a cell from a `CellSpec` on a node: the
JSON of the run's options, written by the controller into the job's script.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lab.errors import LabError, UsageError
from lab.report.terminal import TerminalReport
from lab.rundir import RunDirectory
from lab.scenario.model import Scenario, find_scenario
from lab.scenario.run import RunOptions, run_scenario

INTERRUPTED_EXIT = 130
COPY_BACK_SECONDS = 600.0
_PATH_OPTIONS = frozenset(field.name for field in dataclasses.fields(RunOptions) if "Path" in str(field.type))


def interrupt(signum: int, frame: object) -> None:
    """The first SIGINT or SIGTERM stops the run; later ones must not cut its clean-up short.

    Slurm sends SIGTERM at a job's time limit and on scancel (srun forwards one more): the run must
    reap its QEMU and write its results before SIGKILL comes, KillWait seconds later.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def handle_interrupts() -> None:
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def redirect_output(run_dir: Path) -> None:
    """What `lab scenario` would print goes to the run's output.log: no terminal watches a cell."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunDirectory(run_dir).output_log.open("a") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)


def run_cell(scenario: Callable[[], Scenario], options: RunOptions) -> int:
    """Run the scenario `scenario()` gives (loading it may fail, or find the matrix interrupted); return the
    exit status the engines read: 0 passed, 1 failed, 2 set-up error, 130 interrupted."""
    try:
        report = TerminalReport(Console(file=sys.stdout, highlight=False, soft_wrap=True))
        result = run_scenario(scenario(), options, [report])
        report.verdict(result.verdict, result.run_dir, result.seconds)
        return 0 if result.verdict.passed else 1
    except LabError as error:
        print(f"lab: error: {error}")
        return 2
    except KeyboardInterrupt:
        print("lab: interrupted; QEMU stopped and logs kept")
        return INTERRUPTED_EXIT


@dataclass(frozen=True)
class CellSpec:
    """A cell as a node gets it: the scenario file and the run's options (`run_dir` set).

    With `copy_back`, the run directory is node-local scratch and `dest` is where the matrix wants it:
    after the run, `sh -c COPY_BACK` runs with LAB_RUN_DIR and LAB_DEST set, for clusters that share no
    filesystem with the controller.
    """

    scenario: Path
    options: RunOptions
    copy_back: str | None = None
    dest: Path | None = None

    def to_json(self) -> str:
        options = {name: str(value) if isinstance(value, Path) else value
                   for name, value in dataclasses.asdict(self.options).items()}
        return json.dumps({"scenario": str(self.scenario), "options": options, "copy_back": self.copy_back,
                           "dest": str(self.dest) if self.dest else None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        try:
            data: dict[str, Any] = json.loads(text)
            options: dict[str, Any] = {name: Path(value) if name in _PATH_OPTIONS and value is not None else value
                       for name, value in data["options"].items()}
            spec = cls(Path(data["scenario"]), RunOptions(**options), data.get("copy_back"),
                       Path(data["dest"]) if data.get("dest") else None)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise UsageError(f"not a cell spec ({error}): {text[:200]}") from None
        if spec.options.run_dir is None:
            raise UsageError("a cell spec needs the run directory in its options")
        return spec


def _copy_back(spec: CellSpec, run_dir: Path) -> None:
    """Copy the staged run directory to the controller's; remove the scratch copy only once it is there."""
    if spec.copy_back is None or spec.dest is None:
        raise UsageError("a staged cell needs both a copy-back command and a destination")
    print(f"lab: copying the run directory back: {spec.copy_back}")
    env = {**os.environ, "LAB_RUN_DIR": str(run_dir), "LAB_DEST": str(spec.dest)}
    try:
        done = subprocess.run(["sh", "-c", spec.copy_back], env=env, stdin=subprocess.DEVNULL,
                              timeout=COPY_BACK_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        print(f"lab: error: the copy-back command did not finish in {COPY_BACK_SECONDS:.0f}s; kept {run_dir}")
        return
    if done.returncode != 0:
        print(f"lab: error: the copy-back command exited {done.returncode}; kept {run_dir}")
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.parent.rmdir()


def run_spec(spec: CellSpec) -> int:
    """`lab cell`: one cell on this node, its output in output.log, copied back when it was staged."""
    handle_interrupts()
    run_dir = spec.options.run_dir
    if run_dir is None:
        raise UsageError("a cell spec needs a run directory")
    redirect_output(run_dir)
    code = run_cell(lambda: find_scenario(str(spec.scenario)), spec.options)
    if spec.copy_back is not None:
        _copy_back(spec, run_dir)
    return code
