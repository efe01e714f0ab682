"""The Slurm engine without a cluster: settings, what it submits, and how each way a job ends becomes a cell's status.

A fake Slurm answers `scontrol` with canned records (their fields as Slurm 22.05 prints them, see
docs/slurm-findings.md); tests/fleet/test_slurm_matrix.py runs the same engine on a real local cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.fleet.cell import CellSpec
from lab.fleet.engine import CellOutcome, CellRun
from lab.fleet.matrix import Cell, load_matrix
from lab.fleet.slurm import SlurmEngine
from lab.fleet.slurm_client import SlurmCommandFailed, parse_record, task_ids
from lab.fleet.slurm_settings import SlurmSettings, load_settings, resources, time_limit_minutes
from lab.paths import REPO_ROOT
from lab.rundir import RunDirectory
from lab.scenario.model import find_scenario
from lab.scenario.run import RunOptions

Records = Callable[[int, list[str]], list[dict[str, str]] | None]
"""The records `scontrol show job` gives at poll N, knowing what was cancelled so far."""


class FakeSlurm:
    """sbatch, scontrol and scancel as the engine calls them; array job ids count up from 7."""

    def __init__(self, records: Records, refuse: str | None = None, jobcomp: Path | None = None) -> None:
        self.records = records
        self.refuse = refuse
        self.jobcomp = jobcomp
        self.submitted: list[tuple[list[str], str]] = []
        self.cancelled: list[str] = []
        self.polls = 0

    def submit(self, options: list[str], script: str) -> str:
        if self.refuse:
            raise SlurmCommandFailed(self.refuse)
        self.submitted.append((options, script))
        return str(6 + len(self.submitted))

    def jobs(self, job_id: str) -> list[dict[str, str]] | None:
        self.polls += 1
        return self.records(self.polls, self.cancelled)

    def cancel(self, job_ids: list[str]) -> None:
        self.cancelled.extend(job_ids)

    def jobcomp_log(self) -> Path | None:
        return self.jobcomp


def _task(index: int, state: str, node: str = "tcg1", exit_code: str = "0:0", **more: str) -> dict[str, str]:
    return {"JobId": str(8 + index), "ArrayJobId": "7", "ArrayTaskId": str(index), "JobState": state,
            "Reason": more.pop("Reason", "None"), "ExitCode": exit_code, "NodeList": node, "BatchHost": node,
            "StartTime": "2026-11-29T20:00:00" if node else "Unknown", "TimeLimit": "00:11:00", **more}


def _runs(tmp_path: Path, accels: tuple[str | None, ...] = ("tcg",)) -> list[CellRun]:
    """Cells of poweroff-baseline in `tmp_path/matrix`, one per accelerator given (a PSCI each, to tell them apart)."""
    scenario = find_scenario("poweroff-baseline")
    runs = []
    for index, accel in enumerate(accels):
        cell = Cell(scenario, psci=f"p{index}", accel=accel)
        run_dir = tmp_path / "matrix" / cell.dir_name
        runs.append(CellRun(CellOutcome(cell, run_dir), RunOptions(accel=accel, run_dir=run_dir)))
    (tmp_path / "matrix").mkdir()
    return runs


def _spec_of(script: str, task: int) -> CellSpec:
    """The cell spec an array task's script hands `lab cell`."""
    exec_line = f'exec {shlex.join([sys.executable, "-m", "lab.cli"])} cell "$cell"'
    assert exec_line in script
    printed = subprocess.run(["sh", "-c", script.replace(exec_line, 'printf %s "$cell"')], capture_output=True,
                             text=True, env={**os.environ, "SLURM_ARRAY_TASK_ID": str(task)}, check=True, timeout=10)
    return CellSpec.from_json(printed.stdout)


def _engine(slurm: FakeSlurm, **settings: object) -> SlurmEngine:
    return SlurmEngine(SlurmSettings(**settings), client=slurm, poll_seconds=0)  # type: ignore[arg-type]


def _run(engine: SlurmEngine, runs: list[CellRun], workers: int = 1) -> list[CellOutcome]:
    finished: list[CellOutcome] = []
    engine.run(runs, workers, finished.append)
    return finished


def _ran(run: CellRun, output: str, result: tuple[str, str] | None = None) -> None:
    """What a cell's `lab cell` leaves in its run directory."""
    run_dir = RunDirectory(run.outcome.run_dir)
    run_dir.path.mkdir(exist_ok=True)
    run_dir.output_log.write_text(output)
    if result is not None:
        run_dir.write_result({"verdict": {"status": result[0], "reason": result[1], "checks": []}})


# --- settings ---------------------------------------------------------------------------------------------------


def test_each_host_class_is_its_own_feature_and_partition_unless_the_config_or_matrix_says_otherwise(
        tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CONFIG", str(tmp_path / "absent.yaml"))
    defaults = load_settings()
    assert defaults.host_class("tcg").options() == ["-C", "tcg", "-p", "tcg"]
    assert defaults.host_class("kvm_arm64").options() == ["-C", "kvm_arm64", "-p", "kvm_arm64"]
    assert defaults.start_timeout == 600 and defaults.stage is None

    config = tmp_path / "config.yaml"
    config.write_text("slurm:\n  classes:\n    kvm_arm64: {partition: arm-kvm}\n    tcg: {feature: null}\n"
                      "  start_timeout: 60\n")
    monkeypatch.setenv("LAB_CONFIG", str(config))
    site = load_settings()
    assert site.host_class("tcg").options() == ["-p", "tcg"]
    assert site.host_class("kvm_arm64").options() == ["-C", "kvm_arm64", "-p", "arm-kvm"]
    matrix = load_settings({"classes": {"kvm_arm64": {"feature": "kvm_arm64&fast"}}, "start_timeout": 5})
    assert matrix.host_class("kvm_arm64").options() == ["-C", "kvm_arm64&fast", "-p", "arm-kvm"]
    assert matrix.start_timeout == 5
    assert load_settings(partition="debug").host_class("kvm_arm64").options() == ["-C", "kvm_arm64", "-p", "debug"]


def test_a_bad_slurm_section_is_one_line_naming_file_line_and_field(tmp_path, monkeypatch):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("kernels: [default]\nscenarios: [poweroff-baseline]\nslurm:\n  classes:\n"
                      "    kvm: {feature: kvm}\n")
    with pytest.raises(UsageError, match=r"m\.yaml:4: slurm/classes: 'kvm' is not one of \['tcg', 'kvm_arm64', "):
        load_matrix(matrix)
    config = tmp_path / "config.yaml"
    config.write_text("slurm:\n  start_timeout: soon\n")
    monkeypatch.setenv("LAB_CONFIG", str(config))
    with pytest.raises(UsageError, match=r"config\.yaml:2: slurm/start_timeout: 'soon' is not of type 'number'"):
        load_settings()
    config.write_text("slurm:\n  stage: /var/tmp/lab\n")
    with pytest.raises(UsageError, match="`stage` and `copy_back` go together"):
        load_settings()


def test_a_cell_s_time_limit_covers_every_step_s_timeout_and_its_resources_its_guest():
    baseline = find_scenario("poweroff-baseline")
    # set-up 300 s + boot 120 + mark 30 + poweroff 60 + boot 120 + check 30 = 660 s
    assert time_limit_minutes(baseline) == 11
    loop = find_scenario("hibernate-loop")
    assert time_limit_minutes(loop) > time_limit_minutes(baseline)
    assert resources([baseline, loop]) == [f"--time={time_limit_minutes(loop)}", "--cpus-per-task=2", "--mem=1536M"]


def test_scontrol_records_and_array_task_ids_are_read_as_slurm_writes_them():
    line = ("JobId=12 ArrayJobId=11 ArrayTaskId=1 JobName=lab-m-tcg JobState=TIMEOUT Reason=TimeLimit "
            "Command=sh -c 'x y' ExitCode=0:15 NodeList=tcg1")
    record = parse_record(line)
    assert (record["JobState"], record["Command"], record["NodeList"]) == ("TIMEOUT", "sh -c 'x y'", "tcg1")
    assert [task_ids(text) for text in ("4", "0-3", "1,3-4", "2-7%2", "")] == [
        [4], [0, 1, 2, 3], [1, 3, 4], [2, 3, 4, 5, 6, 7], []]


# --- what it submits --------------------------------------------------------------------------------------------


def test_one_array_per_host_class_throttled_by_workers_whose_script_execs_lab_cell(tmp_path):
    runs = _runs(tmp_path, ("tcg", None, "kvm"))
    slurm = FakeSlurm(lambda poll, cancelled: [_task(0, "COMPLETED"), _task(1, "COMPLETED")])
    for run in runs:
        _ran(run, "PASS\n", ("PASS", "8 checks passed"))
    _run(_engine(slurm), runs, workers=2)

    (tcg_options, tcg_script), (kvm_options, kvm_script) = slurm.submitted
    jobs_dir = tmp_path / "matrix" / "slurm"
    assert tcg_options == ["--array=0-1%2", "--job-name=lab-matrix-tcg", "-C", "tcg", "-p", "tcg", "--time=11",
                           "--cpus-per-task=2", "--mem=1536M", "--no-requeue", f"--chdir={jobs_dir}",
                           f"--output={jobs_dir}/tcg-%A_%a.out"]
    assert kvm_options[:6] == ["--array=0-0%2", "--job-name=lab-matrix-kvm_arm64", "-C", "kvm_arm64", "-p",
                               "kvm_arm64"]
    assert (jobs_dir / "tcg.sh").read_text() == tcg_script
    assert [_spec_of(tcg_script, task).options for task in (0, 1)] == [run.options for run in runs[:2]]
    assert _spec_of(kvm_script, 0).options == runs[2].options
    spec = _spec_of(tcg_script, 0)
    assert (spec.scenario, spec.copy_back) == (find_scenario("poweroff-baseline").path.resolve(), None)
    stray = subprocess.run(["sh", "-c", tcg_script], env={**os.environ, "SLURM_ARRAY_TASK_ID": "5"},
                           capture_output=True, text=True, timeout=10)
    assert (stray.returncode, stray.stderr) == (2, "lab: no cell for array task 5\n")


def test_a_staged_cell_runs_in_node_scratch_and_is_copied_back_to_the_matrix(tmp_path):
    [run] = _runs(tmp_path)
    _ran(run, "PASS\n", ("PASS", "8 checks passed"))
    slurm = FakeSlurm(lambda poll, cancelled: [_task(0, "COMPLETED")])
    _run(_engine(slurm, stage=Path("/scratch/lab"), copy_back='rsync -a "$LAB_RUN_DIR/" "ctl:$LAB_DEST/"'), [run])
    [(options, script)] = slurm.submitted
    assert options[-2:] == ["--chdir=/scratch/lab", "--output=/scratch/lab/tcg-%A_%a.out"]
    spec = _spec_of(script, 0)
    assert spec.options.run_dir == Path("/scratch/lab/matrix") / run.cell.dir_name
    assert (spec.dest, spec.copy_back) == (run.outcome.run_dir, 'rsync -a "$LAB_RUN_DIR/" "ctl:$LAB_DEST/"')


# --- how jobs end -----------------------------------------------------------------------------------------------


EXEC_FAILED = "sh: 1: exec: /opt/lab/python: not found"
TIME_LIMIT = "slurmstepd-tcg1: error: *** JOB 8 ON tcg1 CANCELLED AT 2026-11-29T20:48:04 DUE TO TIME LIMIT ***"


@pytest.mark.parametrize(("record", "output", "result", "slurm_output", "status", "reason"), [
    (_task(0, "COMPLETED"), "PASS …\n", ("PASS", "8 checks passed"), "", "PASS", "8 checks passed"),
    (_task(0, "FAILED", exit_code="1:0"), "FAIL …\n", ("FAIL", "it hibernated"), "", "FAIL", "it hibernated"),
    (_task(0, "FAILED", exit_code="2:0"), "lab: error: no image directory /x\n", None, "", "ERROR",
     "no image directory /x"),
    (_task(0, "FAILED", exit_code="127:0"), None, None, EXEC_FAILED, "ERROR",
     f"slurm job 7_0 FAILED on tcg1 with exit code 127, and its run directory did not come back: {EXEC_FAILED}"),
    (_task(0, "TIMEOUT", exit_code="130:0"), "✓ boot   15.1s\nlab: interrupted; QEMU stopped and logs kept\n",
     ("FAIL", "interrupted"), TIME_LIMIT, "ERROR",
     "slurm job 7_0 TIMEOUT on tcg1 at its time limit (00:11:00): ✓ boot 15.1s | lab: interrupted; QEMU stopped and "
     f"logs kept | {TIME_LIMIT}"),
    (_task(0, "NODE_FAIL", Reason="NodeDown"), "✓ boot\n", None, "", "ERROR",
     "slurm job 7_0 NODE_FAIL on tcg1: ✓ boot"),
    (_task(0, "OUT_OF_MEMORY", exit_code="0:125"), "✓ boot\n", None, "", "ERROR",
     "slurm job 7_0 OUT_OF_MEMORY on tcg1, killed by signal 125: ✓ boot"),
    (_task(0, "CANCELLED", exit_code="0:9"), "✓ boot\n", None, "", "ERROR",
     "slurm job 7_0 CANCELLED on tcg1, killed by signal 9: ✓ boot"),
    (_task(0, "CANCELLED", node=""), None, None, "", "ERROR",
     "never started: slurm job 7_0 CANCELLED before it started"),
    (_task(0, "DEADLINE", node=""), None, None, "", "ERROR", "never started: slurm job 7_0 DEADLINE before it started"),
], ids=["completed", "failed-verdict", "failed-setup", "failed-exec", "timeout", "node-fail", "oom",
        "cancelled-by-someone", "cancelled-pending", "deadline"])
def test_each_way_a_job_ends_becomes_the_cell_s_status_and_reason(tmp_path, record, output, result, slurm_output,
                                                                   status, reason):
    [run] = _runs(tmp_path)
    if output is not None:
        _ran(run, output, result)
    (tmp_path / "matrix" / "slurm").mkdir()
    (tmp_path / "matrix" / "slurm" / "tcg-7_0.out").write_text(slurm_output)
    started = [_task(0, "RUNNING")] if record["NodeList"] else [_task(0, "PENDING", node="", Reason="Priority")]
    slurm = FakeSlurm(lambda poll, cancelled: [_task(0, "PENDING", node="", Reason="Priority")] if poll == 1
                      else started if poll == 2 else [record])
    [finished] = _run(_engine(slurm), [run])
    assert (finished.status, finished.reason) == (status, reason)
    assert finished.host == (record["NodeList"] or None)
    assert RunDirectory(run.outcome.run_dir).output_log.exists(), "every ended cell has a run directory to list"
    assert not slurm.cancelled


def test_a_cell_started_by_slurm_counts_its_time_from_slurm_s_start_time(tmp_path):
    [run] = _runs(tmp_path)
    _ran(run, "PASS\n", ("PASS", "8 checks passed"))
    slurm = FakeSlurm(lambda poll, cancelled: [_task(0, "COMPLETED", StartTime="2000-01-01T00:00:00")])
    [finished] = _run(_engine(slurm), [run])
    assert 0 <= finished.seconds < 5, "never earlier than the submission"


def test_a_job_blocked_from_starting_is_cancelled_after_the_start_timeout(tmp_path):
    runs = _runs(tmp_path, ("tcg", "tcg"))
    blocked = {"JobId": "7", "ArrayJobId": "7", "ArrayTaskId": "0-1%1", "JobState": "PENDING",
               "Reason": "PartitionDown", "NodeList": "", "StartTime": "Unknown"}
    slurm = FakeSlurm(lambda poll, cancelled: [blocked])
    finished = _run(_engine(slurm, start_timeout=0.01), runs)
    assert slurm.cancelled == ["7_0", "7_1"]
    assert [(outcome.status, outcome.reason) for outcome in finished] == [
        ("ERROR", "never started: partition down (slurm job 7_0 was pending with reason PartitionDown for 0.01s, "
                  "then cancelled)"),
        ("ERROR", "never started: partition down (slurm job 7_1 was pending with reason PartitionDown for 0.01s, "
                  "then cancelled)")]
    assert all(outcome.host is None and outcome.seconds == 0 for outcome in finished)


def test_a_queue_is_waited_out_and_its_reason_shown(tmp_path):
    [run] = _runs(tmp_path)
    _ran(run, "PASS\n", ("PASS", "8 checks passed"))
    seen: list[str] = []

    def records(poll: int, cancelled: list[str]) -> list[dict[str, str]]:
        seen.append(run.outcome.reason)
        return [_task(0, "PENDING", node="", Reason="Resources")] if poll < 4 else [_task(0, "COMPLETED")]

    [finished] = _run(_engine(FakeSlurm(records), start_timeout=0.01), [run])
    assert finished.status == "PASS"
    assert seen[1:] == ["slurm job 7_0 pending: Resources"] * 3


def test_a_class_sbatch_refuses_is_all_errors(tmp_path):
    runs = _runs(tmp_path, ("tcg", "tcg"))
    slurm = FakeSlurm(lambda poll, cancelled: [], refuse="sbatch exited 1: sbatch: error: Invalid partition name")
    finished = _run(_engine(slurm), runs)
    assert {(outcome.status, outcome.reason) for outcome in finished} == {
        ("ERROR", "never started: could not submit the tcg cells: sbatch exited 1: sbatch: error: Invalid partition "
                  "name")}


def test_a_task_slurmctld_forgot_is_read_from_jobcomp_else_from_its_run_directory(tmp_path):
    runs = _runs(tmp_path, ("tcg", "tcg", "tcg"))
    jobcomp = tmp_path / "jobcomp.txt"
    jobcomp.write_text("JobId=9 UserId=root(0) JobState=NODE_FAIL NodeList=tcg1 ExitCode=0:0 ArrayJobId=7 "
                       "ArrayTaskId=1 StartTime=2026-11-29T20:00:00\n")
    _ran(runs[0], "PASS\n", ("PASS", "8 checks passed"))
    finished = _run(_engine(FakeSlurm(lambda poll, cancelled: None, jobcomp=jobcomp)), runs)
    assert [(outcome.status, outcome.reason) for outcome in finished] == [
        ("PASS", "8 checks passed"), ("ERROR", "slurm job 7_1 NODE_FAIL on tcg1"),
        ("ERROR", "slurm job 7_2 ended unseen: slurmctld forgot it (MinJobAge) and no jobcomp/filetxt log is "
                  "readable here")]


def test_ctrl_c_cancels_the_matrix_s_jobs_and_marks_its_cells(tmp_path):
    runs = _runs(tmp_path, ("tcg", "tcg", "tcg"))
    _ran(runs[0], "PASS\n", ("PASS", "8 checks passed"))

    def records(poll: int, cancelled: list[str]) -> list[dict[str, str]]:
        if poll == 2:
            raise KeyboardInterrupt
        if cancelled:
            return [_task(0, "COMPLETED"), _task(1, "CANCELLED", exit_code="130:0"), _task(2, "CANCELLED", node="")]
        return [_task(0, "COMPLETED"), _task(1, "RUNNING"),
                {"ArrayJobId": "7", "ArrayTaskId": "2", "JobState": "PENDING", "Reason": "JobArrayTaskLimit"}]

    slurm = FakeSlurm(records)
    finished: list[CellOutcome] = []
    with pytest.raises(KeyboardInterrupt):
        _engine(slurm).run(runs, 2, finished.append)
    assert slurm.cancelled == ["7"]
    assert [outcome.cell.id for outcome in finished] == [runs[0].cell.id]
    assert [(run.outcome.status, run.outcome.reason, run.outcome.host) for run in runs] == [
        ("PASS", "8 checks passed", "tcg1"),
        ("INTERRUPTED", "cancelled by Ctrl-C: slurm job 7_1 CANCELLED on tcg1", "tcg1"),
        ("NOT-RUN", "interrupted before it started", None)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_controller_that_stops_answering_cancels_the_jobs_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("lab.fleet.slurm.CONTROLLER_PATIENCE_SECONDS", 0.0)
    monkeypatch.setattr("lab.fleet.slurm.STOP_GRACE_SECONDS", 0.0)
    runs = _runs(tmp_path)

    def records(poll: int, cancelled: list[str]) -> list[dict[str, str]]:
        if poll == 1:
            return [_task(0, "RUNNING")]
        raise SlurmCommandFailed("scontrol show job 7: Unable to contact slurm controller")

    slurm = FakeSlurm(records)
    with pytest.raises(Exception, match="slurmctld did not answer for 0s"):
        _run(_engine(slurm), runs)
    assert slurm.cancelled == ["7"]
    assert runs[0].outcome.status == "ERROR"
    assert runs[0].outcome.reason.startswith("cancelled: the lab stopped following its jobs (slurmctld did not answer")


# --- the cell's side --------------------------------------------------------------------------------------------


def test_a_cell_spec_survives_its_trip_through_json():
    options = RunOptions(arch="arm64", image="/images/x", accel="kvm", psci="none", run_dir=Path("/runs/m/c"),
                         kernel=Path("/k/Image"))
    spec = CellSpec(Path("/lab/scenarios/poweroff-baseline.yaml"), options, "cp -a x y", Path("/ctl/m/c"))
    assert CellSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["options"]["run_dir"] == "/runs/m/c"
    with pytest.raises(UsageError, match="not a cell spec"):
        CellSpec.from_json('{"scenario": "x"}')
    with pytest.raises(UsageError, match="needs the run directory"):
        CellSpec.from_json('{"scenario": "x", "options": {}}')


def test_lab_cell_writes_its_output_to_the_run_directory_and_copies_it_back(tmp_path):
    """A set-up error ends the run at once (exit 2), so no guest boots; the copy-back runs all the same."""
    staged, dest = tmp_path / "scratch" / "m" / "cell", tmp_path / "controller" / "cell"
    dest.parent.mkdir()
    spec = CellSpec(tmp_path / "missing.yaml", RunOptions(run_dir=staged), 'cp -a "$LAB_RUN_DIR" "$LAB_DEST"', dest)
    done = subprocess.run([sys.executable, "-m", "lab.cli", "cell", spec.to_json()], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "")
    assert RunDirectory(dest).output_log.read_text().splitlines() == [
        f"lab: error: no scenario file {tmp_path / 'missing.yaml'}",
        """lab: copying the run directory back: cp -a "$LAB_RUN_DIR" "$LAB_DEST\"""",
    ]
    assert not (tmp_path / "scratch" / "m").exists(), "the scratch copy goes once it is back"


@pytest.mark.parametrize("args", [["run", "--matrix", "matrices/nightly.yaml"], ["scenario", "poweroff-baseline"]],
                         ids=["run", "scenario"])
def test_a_partition_without_the_slurm_engine_is_a_usage_error(args):
    done = subprocess.run([sys.executable, "-m", "lab.cli", *args, "--partition", "kvm"], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)
    assert (done.returncode, done.stderr) == (2, "lab: error: --partition goes with --engine slurm\n")
