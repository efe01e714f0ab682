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

Beside it: lab.fleet.slurm_settings (host classes, what a cell asks of a node), lab.fleet.slurm_client
(the Slurm commands) and lab.fleet.slurm_srun (one scenario through srun, output live).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lab.errors import SetupError
from lab.fleet.cell import CellSpec
from lab.fleet.engine import CellOutcome, CellRun, CellStatus, mark_not_run, settle
from lab.fleet.slurm_client import SlurmClient, SlurmCommandFailed, parse_record, task_ids
from lab.fleet.slurm_settings import LAB_COMMAND, SlurmSettings, host_class_name, resources
from lab.lines import last_file_lines
from lab.rundir import RunDirectory

POLL_SECONDS = 1.0
CONTROLLER_PATIENCE_SECONDS = 120.0
STOP_GRACE_SECONDS = 120.0
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
