"""The Slurm engine: a matrix's cells as Slurm array jobs, one array per host class, on whatever nodes Slurm picks.

Slurm, not the lab, decides where and when cells run: a cell's host class (`tcg`, or `kvm_arm64` for arm64
cells forced onto KVM) becomes a feature constraint and a partition, the matrix's workers the array's
throttle, and the scenario's step timeouts its time limit. On the node, the job script `exec`s `lab cell`
(lab.fleet.cell), so Slurm's SIGTERM, at the time limit or on scancel, reaches the run's own clean-up.

The controller learns how each job ended from `scontrol -o show job` (no accounting needed; see
docs/slurm-findings.md), falling back to a jobcomp/filetxt log for a job slurmctld has forgotten. A cell
whose run ended (COMPLETED, FAILED) is settled from its run directory like a local one; a job that Slurm
ended (TIMEOUT, NODE_FAIL, CANCELLED, OUT_OF_MEMORY, …) or never started is an ERROR that says which, with
the tail of what the job printed. docs/slurm.md says how a fleet is set up for this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lab.errors import LabError, SetupError, UsageError
from lab.fleet.cell import CellSpec
from lab.fleet.engine import CellOutcome, CellRun, CellStatus, mark_not_run, settle
from lab.lines import last_file_lines
from lab.paths import load_schema
from lab.rundir import RunDirectory
from lab.scenario.model import Scenario, Step
from lab.scenario.steps import DEFAULT_TIMEOUTS
from lab.vocabulary import guest_arch
from lab.yaml_file import read_yaml

LAB_COMMAND = (sys.executable, "-m", "lab.cli")
"""How a node starts the lab: the controller's own interpreter, so the lab must live at the same path there."""
CONFIG_ENV = "LAB_CONFIG"
DEFAULT_START_TIMEOUT = 600.0
POLL_SECONDS = 1.0
COMMAND_SECONDS = 30.0
CONTROLLER_PATIENCE_SECONDS = 120.0
STOP_GRACE_SECONDS = 120.0
SETUP_SECONDS = 300.0
UNTIMED_STEP_SECONDS = 30.0
QEMU_OVERHEAD_MIB = 512
TAIL_LINES = 3

FINAL_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                          "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})
# Pending reasons that mean the job cannot start until an admin acts; any other pending reason is a queue.
NEVER_STARTS = {
    "PartitionDown": "partition down",
    "PartitionInactive": "partition inactive",
    "PartitionConfig": "the partition does not take the job",
    "PartitionNodeLimit": "the partition's node limits exclude the job",
    "PartitionTimeLimit": "the cell's time limit exceeds the partition's",
    "ReqNodeNotAvail": "no node with the feature is available",
    "NodeDown": "a node the job needs is down",
    "BadConstraints": "no node has the feature",
    "AccountNotAllowed": "the account may not use the partition",
    "QOSNotAllowed": "the QOS may not use the partition",
    "InvalidAccount": "invalid account",
    "InvalidQOS": "invalid QOS",
}
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s[A-Za-z][A-Za-z0-9_:/]*=|$)")


# --- settings: host classes and how cells reach them ---------------------------------------------------------


def config_path() -> Path:
    """The lab's config file: `$LAB_CONFIG`, else `$XDG_CONFIG_HOME/hibernation-lab/config.yaml`, else
    `~/.config/hibernation-lab/config.yaml`."""
    if explicit := os.environ.get(CONFIG_ENV):
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "hibernation-lab" / "config.yaml"


@dataclass(frozen=True)
class HostClass:
    """Where a kind of cell may run: the feature constraint and the partition (None: leave it to Slurm)."""

    name: str
    feature: str | None
    partition: str | None

    def options(self) -> list[str]:
        return [*(["-C", self.feature] if self.feature else []), *(["-p", self.partition] if self.partition else [])]


@dataclass(frozen=True)
class SlurmSettings:
    """The `slurm` sections of the lab config and the matrix file, merged; `partition` is `--partition`."""

    classes: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    partition: str | None = None
    start_timeout: float = DEFAULT_START_TIMEOUT
    stage: Path | None = None
    copy_back: str | None = None

    def host_class(self, name: str) -> HostClass:
        """A class not configured has the feature and the partition of its own name."""
        given = self.classes.get(name, {})
        return HostClass(name, given.get("feature", name), self.partition or given.get("partition", name))


def host_class_name(accel: str | None, arch: str) -> str:
    """Cells forced onto KVM need a host of their own arch with KVM (`kvm_arm64`); any other runs on TCG."""
    return f"kvm_{guest_arch(arch).debian}" if accel == "kvm" else "tcg"


def _config_section() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    file = read_yaml(path, "lab config")
    schema = {"type": ["object", "null"], "additionalProperties": False,
              "properties": {"slurm": load_schema("matrix")["properties"]["slurm"]}}
    file.validate(schema)
    return dict((file.data or {}).get("slurm", {}))


def load_settings(matrix_section: Mapping[str, Any] | None = None, partition: str | None = None) -> SlurmSettings:
    """Defaults, then the lab config's `slurm` section, then the matrix file's, then `--partition` for all."""
    classes: dict[str, dict[str, str | None]] = {}
    merged: dict[str, Any] = {}
    for section in (_config_section(), dict(matrix_section or {})):
        for name, given in section.pop("classes", {}).items():
            classes.setdefault(name, {}).update(given)
        merged.update(section)
    if ("stage" in merged) != ("copy_back" in merged):
        raise UsageError("slurm settings: `stage` and `copy_back` go together (see docs/slurm.md)")
    return SlurmSettings(classes, partition, float(merged.get("start_timeout", DEFAULT_START_TIMEOUT)),
                         Path(merged["stage"]) if "stage" in merged else None, merged.get("copy_back"))


# --- what a cell asks of a node ------------------------------------------------------------------------------


def _step_seconds(step: Step) -> float:
    if step.kind == "repeat":
        return float(step.params["times"] * sum(_step_seconds(child) for child in step.children))
    return float(step.params.get("timeout", DEFAULT_TIMEOUTS.get(step.kind, UNTIMED_STEP_SECONDS)))


def time_limit_minutes(scenario: Scenario) -> int:
    """Every wait of a run is bounded by its step's timeout: their sum, plus set-up, bounds the run."""
    return math.ceil((SETUP_SECONDS + sum(_step_seconds(step) for step in scenario.steps)) / 60)


def resources(scenarios: Iterable[Scenario]) -> list[str]:
    """Time, CPUs and memory for the most demanding of `scenarios`: QEMU's threads and the guest's RAM."""
    chosen = list(scenarios)
    return [f"--time={max(time_limit_minutes(s) for s in chosen)}",
            f"--cpus-per-task={max(s.cpus for s in chosen)}",
            f"--mem={max(s.memory_mib for s in chosen) + QEMU_OVERHEAD_MIB}M"]


# --- the Slurm commands --------------------------------------------------------------------------------------


class SlurmCommandFailed(LabError):
    """A Slurm client command failed or did not answer; says which and what it printed."""


def parse_record(line: str) -> dict[str, str]:
    """One `scontrol -o show …` (or jobcomp/filetxt) line as a dict; values may hold spaces."""
    return dict(_FIELD.findall(line.strip()))


def task_ids(text: str) -> list[int]:
    """An ArrayTaskId: `4`, or the tasks of a pending record not split off yet: `0-3`, `1,3-5`, `2-7%2`."""
    ids: list[int] = []
    for part in text.split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            ids.extend(range(int(first), int(last or first) + 1))
    return ids


class SlurmClient:
    """The Slurm commands the engine runs, each bounded. They read SLURM_CONF, SBATCH_* and the rest of the
    standard Slurm environment themselves; each runs in its own session, so that a Ctrl-C at the terminal
    reaches the lab and not a scancel it is running."""

    def __init__(self, timeout: float = COMMAND_SECONDS) -> None:
        self.timeout = timeout

    def run(self, args: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(args, input=input, capture_output=True, text=True, timeout=self.timeout,
                                  start_new_session=True, check=False)
        except FileNotFoundError:
            raise SlurmCommandFailed(f"{args[0]} not found: install slurm-client (docs/slurm.md)") from None
        except subprocess.TimeoutExpired:
            raise SlurmCommandFailed(f"`{shlex.join(args[:4])}` did not answer within {self.timeout:g}s") from None

    def _checked(self, args: list[str], input: str | None = None) -> str:
        done = self.run(args, input)
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise SlurmCommandFailed(f"{args[0]} exited {done.returncode}: {said[-1] if said else 'no output'}")
        return done.stdout

    def submit(self, options: list[str], script: str) -> str:
        """sbatch with the script on stdin; the job id."""
        return self._checked(["sbatch", "--parsable", *options], script).strip().split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]] | None:
        """One record per array task (pending tasks may share one); None once slurmctld has forgotten the job."""
        done = self.run(["scontrol", "-o", "show", "job", job_id])
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return None
            raise SlurmCommandFailed(f"scontrol show job {job_id}: {done.stderr.strip() or 'no answer'}")
        return [parse_record(line) for line in done.stdout.splitlines() if line.strip()]

    def cancel(self, job_ids: list[str]) -> None:
        self._checked(["scancel", *job_ids])

    def jobcomp_log(self) -> Path | None:
        """The jobcomp/filetxt log, if the cluster keeps one this machine can read."""
        text = self._checked(["scontrol", "show", "config"])
        config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", text, re.MULTILINE))
        path = Path(config.get("JobCompLoc", ""))
        return path if config.get("JobCompType") == "jobcomp/filetxt" and path.is_file() else None


# --- following the jobs ---------------------------------------------------------------------------------------


def _exit_code(record: Mapping[str, str]) -> tuple[int, int]:
    """ExitCode `status:signal`."""
    status, _, number = record.get("ExitCode", "0:0").partition(":")
    return (int(status) if status.isdigit() else 0), (int(number) if number.isdigit() else 0)


def _node(record: Mapping[str, str]) -> str | None:
    for key in ("BatchHost", "NodeList"):
        value = record.get(key, "")
        if value and value not in ("(null)", "None"):
            return value
    return None


def _seconds_since(stamp: str | None) -> float | None:
    """How long ago a Slurm time (`2026-11-29T20:38:59`, this machine's local time) was; None if unset."""
    try:
        return time.time() - datetime.fromisoformat(stamp or "").timestamp()
    except ValueError:
        return None


def _last_lines(path: Path, count: int) -> list[str]:
    """The file's last lines, each with its runs of spaces (a console's columns) closed up."""
    return [" ".join(line.split()) for line in last_file_lines(path, count)]


@dataclass
class _Task:
    """One array task: the cell it runs, and since when it has been blocked from starting."""

    run: CellRun
    job: str
    index: int
    slurm_output: Path | None
    """Where the job's own output goes, when this machine can read it (not with `stage`)."""
    submitted: float
    blocked_since: float | None = None

    @property
    def id(self) -> str:
        return f"{self.job}_{self.index}"

    @property
    def outcome(self) -> CellOutcome:
        return self.run.outcome


def _keep_a_run_directory(outcome: CellOutcome) -> None:
    """A cell that ended without a run directory (it never started, or the node could not write or copy one)
    gets one saying why, so that the matrix's junit.xml and report.html list it like any other ERROR."""
    if not outcome.run_dir.exists():
        outcome.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError), RunDirectory(outcome.run_dir).output_log.open("x") as log:
            log.write(f"lab: error: {outcome.reason}\n")


def _end_error(outcome: CellOutcome, reason: str) -> None:
    """An ERROR the engine caused."""
    outcome.end(CellStatus.ERROR, reason)
    _keep_a_run_directory(outcome)


class SlurmEngine:
    """Each host class's cells as one Slurm array job; see the module docstring."""

    def __init__(self, settings: SlurmSettings, client: SlurmClient | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.settings = settings
        self.client = client or SlurmClient()
        self.poll_seconds = poll_seconds
        self._unreachable_since: float | None = None
        self._jobcomp_asked = False
        self._jobcomp: Path | None = None

    def run(self, runs: list[CellRun], workers: int, on_finished: Callable[[CellOutcome], None]) -> None:
        tasks: list[_Task] = []
        try:
            self._submit(runs, workers, tasks, on_finished)
            self._follow(tasks, on_finished)
        except KeyboardInterrupt:
            self._cancel(tasks, CellStatus.INTERRUPTED, "cancelled by Ctrl-C")
            mark_not_run([run.outcome for run in runs if not run.outcome.finished])
            raise
        except Exception as error:
            why = f"cancelled: the lab stopped following its jobs ({error})"
            self._cancel(tasks, CellStatus.ERROR, why)
            for run in runs:
                if not run.outcome.finished:
                    _end_error(run.outcome, f"never started: {why}")
            raise

    # -- submission

    def _spec(self, run: CellRun) -> CellSpec:
        scenario = run.cell.scenario.path.resolve()
        run_dir = run.outcome.run_dir.absolute()
        if self.settings.stage is None:
            return CellSpec(scenario, dataclasses.replace(run.options, run_dir=run_dir))
        staged = self.settings.stage / run_dir.parent.name / run_dir.name
        return CellSpec(scenario, dataclasses.replace(run.options, run_dir=staged), self.settings.copy_back, run_dir)

    def _script(self, runs: list[CellRun], matrix_dir: Path) -> str:
        """The array's batch script: its task id picks the cell, and `exec` lets Slurm's signals reach it."""
        lines = ["#!/bin/sh", f"# lab run: cells of {matrix_dir}, one per array task (lab.fleet.slurm)",
                 'case "$SLURM_ARRAY_TASK_ID" in']
        lines += [f"{index}) cell={shlex.quote(self._spec(run).to_json())} ;;" for index, run in enumerate(runs)]
        lines += ['*) echo "lab: no cell for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac",
                  f'exec {shlex.join(LAB_COMMAND)} cell "$cell"']
        return "\n".join(lines) + "\n"

    def _submit(self, runs: list[CellRun], workers: int, tasks: list[_Task],
                on_finished: Callable[[CellOutcome], None]) -> None:
        """One array per host class; a class whose array sbatch refuses is ERROR at once, the others go on."""
        matrix_dir = runs[0].outcome.run_dir.parent.absolute()
        jobs_dir = matrix_dir / "slurm"
        jobs_dir.mkdir(exist_ok=True)
        classes: dict[str, list[CellRun]] = {}
        for run in runs:
            classes.setdefault(host_class_name(run.options.accel, run.options.arch), []).append(run)
        for name, members in classes.items():
            host = self.settings.host_class(name)
            script = self._script(members, matrix_dir)
            (jobs_dir / f"{name}.sh").write_text(script)
            output_dir = self.settings.stage or jobs_dir
            options = [f"--array=0-{len(members) - 1}%{workers}", f"--job-name=lab-{matrix_dir.name}-{name}",
                       *host.options(), *resources(run.cell.scenario for run in members), "--no-requeue",
                       f"--chdir={output_dir}", f"--output={output_dir}/{name}-%A_%a.out"]
            # An interrupt waits until the job id is recorded: a job submitted but not known would be left behind.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                job = self.client.submit(options, script)
                submitted = time.monotonic()
                for index, run in enumerate(members):
                    output = None if self.settings.stage else jobs_dir / f"{name}-{job}_{index}.out"
                    tasks.append(_Task(run, job, index, output, submitted))
            except SlurmCommandFailed as refused:
                for run in members:
                    _end_error(run.outcome, f"never started: could not submit the {name} cells: {refused}")
                    on_finished(run.outcome)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    # -- polling

    def _records(self, job: str) -> dict[int, dict[str, str]] | None:
        """The job's records by array task; None when slurmctld did not answer this time (it may be restarting:
        the engine waits up to CONTROLLER_PATIENCE_SECONDS for it)."""
        try:
            records = self.client.jobs(job)
        except SlurmCommandFailed as error:
            now = time.monotonic()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since > CONTROLLER_PATIENCE_SECONDS:
                raise SetupError(f"slurmctld did not answer for {CONTROLLER_PATIENCE_SECONDS:.0f}s: {error}") from None
            return None
        self._unreachable_since = None
        by_task: dict[int, dict[str, str]] = {}
        for record in records or []:
            for index in task_ids(record.get("ArrayTaskId", "")):
                by_task[index] = record
        return by_task

    def _follow(self, tasks: list[_Task], on_finished: Callable[[CellOutcome], None]) -> None:
        while unfinished := [task for task in tasks if not task.outcome.finished]:
            for job in sorted({task.job for task in unfinished}):
                records = self._records(job)
                if records is None:
                    continue
                for task in (task for task in unfinished if task.job == job):
                    record = records.get(task.index) or self._from_jobcomp(task)
                    if record is None:
                        self._forgotten(task)
                    elif record.get("JobState") == "PENDING":
                        self._pending(task, record)
                    elif record.get("JobState") not in FINAL_STATES:
                        self._started(task, record)
                    else:
                        self._ended(task, record)
                    if task.outcome.finished:
                        on_finished(task.outcome)
            if any(not task.outcome.finished for task in tasks):
                time.sleep(self.poll_seconds)

    def _from_jobcomp(self, task: _Task) -> dict[str, str] | None:
        """The jobcomp/filetxt line of a task slurmctld no longer lists (it keeps ended jobs MinJobAge seconds)."""
        if not self._jobcomp_asked:
            self._jobcomp_asked = True
            with contextlib.suppress(SlurmCommandFailed):
                self._jobcomp = self.client.jobcomp_log()
        if self._jobcomp is None:
            return None
        found = [record for line in self._jobcomp.read_text(errors="replace").splitlines()
                 if (record := parse_record(line)).get("ArrayJobId") == task.job
                 and record.get("ArrayTaskId") == str(task.index)]
        return found[-1] if found else None

    def _pending(self, task: _Task, record: Mapping[str, str]) -> None:
        """A queued task waits as long as Slurm makes it; one that cannot start is cancelled after start_timeout."""
        reason = record.get("Reason", "None")
        if task.outcome.status is CellStatus.WAITING:
            task.outcome.reason = f"slurm job {task.id} pending: {reason}"
        blocker = NEVER_STARTS.get(reason.split(",")[0])
        if blocker is None:
            task.blocked_since = None
            return
        now = time.monotonic()
        task.blocked_since = task.blocked_since or now
        if now - task.blocked_since < self.settings.start_timeout:
            return
        self.client.cancel([task.id])
        _end_error(task.outcome, f"never started: {blocker} (slurm job {task.id} was pending with reason {reason} "
                                 f"for {self.settings.start_timeout:g}s, then cancelled)")

    def _started(self, task: _Task, record: Mapping[str, str]) -> None:
        """Record the node; the cell's time counts from Slurm's StartTime (polling notices starts late)."""
        if task.outcome.status is not CellStatus.WAITING:
            return
        since = _seconds_since(record.get("StartTime"))
        ago = min(max(since or 0.0, 0.0), time.monotonic() - task.submitted)
        task.outcome.reason = ""
        task.outcome.start(_node(record) or "unknown", ago)

    def _tail(self, task: _Task) -> str:
        """The last lines the cell and the job printed: the cell's output.log, then Slurm's output file."""
        lines = _last_lines(RunDirectory(task.outcome.run_dir).output_log, TAIL_LINES)
        if task.slurm_output is not None:
            lines += _last_lines(task.slurm_output, TAIL_LINES)
        return f": {' | '.join(lines)}" if lines else ""

    def _ended(self, task: _Task, record: Mapping[str, str]) -> None:
        """COMPLETED and FAILED runs ended on their own and are settled from their run directory; any other
        final state is Slurm's doing and an ERROR naming it."""
        state = record["JobState"]
        node = _node(record)
        if node is None:
            _end_error(task.outcome, f"never started: slurm job {task.id} {state} before it started{self._tail(task)}")
            return
        self._started(task, record)
        status, signal_number = _exit_code(record)
        account = f"slurm job {task.id} {state} on {node}"
        if state in ("COMPLETED", "FAILED") and signal_number == 0:
            missing = ", and its run directory did not come back" if not task.outcome.run_dir.exists() else ""
            settle(task.outcome, reached_verdict=status in (0, 1),
                   otherwise=f"{account} with exit code {status}{missing}{self._tail(task)}")
            _keep_a_run_directory(task.outcome)
        elif state == "TIMEOUT":
            _end_error(task.outcome, f"{account} at its time limit ({record.get('TimeLimit', '?')}){self._tail(task)}")
        elif signal_number:
            _end_error(task.outcome, f"{account}, killed by signal {signal_number}{self._tail(task)}")
        else:
            _end_error(task.outcome, f"{account}{self._tail(task)}")

    def _forgotten(self, task: _Task) -> None:
        """Neither slurmctld nor a jobcomp log knows the task any more: its run directory is all there is."""
        if RunDirectory(task.outcome.run_dir).read_result() is not None:
            if task.outcome.status is CellStatus.WAITING:
                task.outcome.start("unknown")
            settle(task.outcome, reached_verdict=True, otherwise="")
        else:
            _end_error(task.outcome, f"slurm job {task.id} ended unseen: slurmctld forgot it (MinJobAge) and no "
                                     "jobcomp/filetxt log is readable here")

    # -- stopping

    def _cancel(self, tasks: list[_Task], status: CellStatus, why: str) -> None:
        """scancel every job of the matrix, wait (bounded) until Slurm confirms each task ended, and end its cell:
        `status` with `why` if it had started, NOT-RUN (or ERROR, when the lab failed) if it had not."""
        previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            live = [task for task in tasks if not task.outcome.finished]
            note = ""
            if live:
                try:
                    self.client.cancel(sorted({task.job for task in live}))
                except SlurmCommandFailed as error:
                    note = f"; scancel failed: {error}"
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while live and time.monotonic() < deadline:
                for job in sorted({task.job for task in live}):
                    records = self._records_while_stopping(job)
                    for task in (task for task in live if task.job == job):
                        record = records.get(task.index) if records is not None else None
                        if records is not None and (record is None or record.get("JobState") in FINAL_STATES):
                            self._stopped(task, record, status, why + note)
                live = [task for task in live if not task.outcome.finished]
                if live:
                    time.sleep(self.poll_seconds)
            for task in live:
                self._stopped(task, None, status, f"{why}{note}; Slurm did not confirm its end within "
                                                  f"{STOP_GRACE_SECONDS:.0f}s")
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _records_while_stopping(self, job: str) -> dict[int, dict[str, str]] | None:
        try:
            return self._records(job)
        except SetupError:
            return None

    def _stopped(self, task: _Task, record: Mapping[str, str] | None, status: CellStatus, why: str) -> None:
        outcome = task.outcome
        state = (record or {}).get("JobState")
        if record is not None and state in ("COMPLETED", "FAILED"):
            self._ended(task, record)
            return
        node = _node(record) if record is not None else outcome.host
        if node is None:
            if status is CellStatus.INTERRUPTED:
                mark_not_run([outcome])
            else:
                _end_error(outcome, f"never started: {why}")
            return
        if record is not None:
            self._started(task, record)
        outcome.end(status, f"{why}: slurm job {task.id} {state or 'cancelled'} on {node}")


# --- one scenario with live output: `lab scenario NAME --engine slurm` ----------------------------------------


def srun_scenario(argv: list[str], scenario: Scenario, arch: str, accel: str | None, settings: SlurmSettings) -> int:
    """Run `lab scenario` with these arguments on a node of the scenario's host class, its output live here and
    its exit status passed through; an interrupt cancels the step (its run still cleans up on the node)."""
    host = settings.host_class(host_class_name(accel, arch))
    command = ["srun", f"--job-name=lab-{scenario.name}", *host.options(), *resources([scenario]),
               f"--immediate={math.ceil(settings.start_timeout)}", "--quit-on-interrupt",
               *LAB_COMMAND, *argv, "--engine", "local"]
    print(f"lab: on Slurm: {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        srun = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except FileNotFoundError:
        raise SetupError("srun not found: install slurm-client (docs/slurm.md)") from None
    try:
        code = srun.wait()
    except KeyboardInterrupt:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        srun.send_signal(signal.SIGINT)
        try:
            srun.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            srun.kill()
            srun.wait()
        raise
    return code if code >= 0 else 128 - code
