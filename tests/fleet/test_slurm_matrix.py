"""`lab run --engine slurm` and `lab scenario --engine slurm` on a real local Slurm cluster (tests/support).

The cells are the cheapest that show each case: a scenario whose first boot may take a second (it fails
at once), and one that boots and then idles, which only a time limit or a cancel ends. Each test runs the
lab as its users do, as a command, with the cluster's SLURM_CONF.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.errors import LAST_SEEN
from lab.fleet.slurm_settings import QEMU_OVERHEAD_MIB
from lab.machine.accel import kvm_status
from lab.paths import REPO_ROOT
from lab.rundir import RunDirectory
from tests.support.slurm_cluster import LocalSlurmCluster, wait_until

pytestmark = pytest.mark.slurm
guest = pytest.mark.guest

QUICK_FAIL = """\
name: quick-fail
description: The first boot may take {seconds} s to be ready, which no boot manages, so the run fails at once.
steps:
  - boot: {{expect: fresh, timeout: {seconds}}}
"""
NEVER_RESUMED = """\
name: quick-fail
description: Expects its first boot to be a resume, which a first boot never is, so the run fails once the guest is up.
steps:
  - boot: {expect: resumed, timeout: 60}
"""
IDLE = """\
name: idle
description: Boots, then idles in the guest for ten minutes, unless a time limit or a cancel ends it sooner.
steps:
  - boot: {expect: fresh}
  - run: {command: "sleep 600", timeout: 700}
"""
RUN_FILES = {"result.json", "junit.xml", "report.html", "output.log"}


def _env(cluster: LocalSlurmCluster, config: Path | None = None) -> dict[str, str]:
    """The cluster's SLURM_CONF, this checkout's lab, and a lab config of the test's own (or none)."""
    return {**cluster.env, "PYTHONPATH": str(REPO_ROOT), "LAB_CONFIG": str(config or "/nonexistent/config.yaml")}


def _lab(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _start_lab(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lab.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _matrix(tmp_path: Path, scenario: str, body: str, name: str = "m") -> Path:
    (tmp_path / "scenario.yaml").write_text(scenario)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"kernels: [default]\nscenarios: [scenario.yaml]\n{body}")
    return path


def _summary(runs: Path) -> tuple[Path, dict]:
    (directory,) = (path for path in runs.iterdir() if path.is_dir())
    return directory, json.loads((directory / "matrix.json").read_text())


def _jobs(cluster: LocalSlurmCluster, name: str) -> list[dict[str, str]]:
    """Every array task (or job) of that name slurmctld still knows, with its state and node."""
    listed = cluster.run(["squeue", "--states=all", "--noheader", f"--name={name}", "--format=%i|%T|%N"]).stdout
    return [dict(zip(("id", "state", "node"), line.split("|"), strict=True)) for line in listed.splitlines()]


def _without_console_tail(reason: str) -> str:
    """A timeout's reason ends with the console lines seen so far, which depend on how fast the guest got going."""
    return reason.split(LAST_SEEN)[0]


def _qemu_of(run_dir: Path) -> list[str]:
    """QEMU processes whose command line names the run directory (its swap disk is there)."""
    found = subprocess.run(["pgrep", "-af", f"qemu-system.*{run_dir}"], capture_output=True, text=True)
    return found.stdout.splitlines()


def _running_with_console(cluster: LocalSlurmCluster, job_name: str, run_dir: Path) -> str:
    """Wait until the job's first task runs a guest that has printed to its console; its task id."""
    def guest_up() -> bool:
        running = [job for job in _jobs(cluster, job_name) if job["state"] == "RUNNING"]
        console = RunDirectory(run_dir).boot("boot1").console
        return bool(running) and console.exists() and console.stat().st_size > 0

    wait_until(guest_up, 120, f"job {job_name} to run a guest that prints to its console", interval=0.5)
    return next(job["id"] for job in _jobs(cluster, job_name) if job["state"] == "RUNNING")


@guest
def test_cells_land_on_their_class_s_node_with_the_results_of_a_local_run(slurm_cluster, tmp_path):
    """A TCG cell runs on tcg1 and fails; a KVM cell runs on kvm1, where an x86 host cannot run arm64 KVM."""
    matrix = _matrix(tmp_path, QUICK_FAIL.format(seconds=1), "accelerators: [tcg, kvm]\n")
    env = _env(slurm_cluster)
    on_slurm = _lab(env, "run", "--matrix", str(matrix), "--engine", "slurm", "--runs-dir", str(tmp_path / "slurm"))
    local = _lab(env, "run", "--matrix", str(matrix), "--runs-dir", str(tmp_path / "local"))
    assert (on_slurm.returncode, local.returncode) == (1, 1), on_slurm.stderr + local.stderr

    slurm_dir, slurm_summary = _summary(tmp_path / "slurm")
    local_dir, local_summary = _summary(tmp_path / "local")
    tcg, kvm = slurm_summary["cells"]
    assert (tcg["accel"], tcg["host"], kvm["accel"], kvm["host"]) == ("tcg", "tcg1", "kvm", "kvm1")
    assert (tcg["status"], _without_console_tail(tcg["reason"])) == (
        "FAIL", "timed out after 1.0s waiting for boot1 to become ready")
    works, why_not = kvm_status("aarch64")
    assert (kvm["status"], why_not in kvm["reason"]) == (("FAIL", True) if works else ("ERROR", True))

    assert set(slurm_summary) == set(local_summary)
    for on_node, here in zip(slurm_summary["cells"], local_summary["cells"], strict=True):
        assert set(on_node) == set(here)
        assert (on_node["id"], on_node["status"], _without_console_tail(on_node["reason"])) == (
            here["id"], here["status"], _without_console_tail(here["reason"]))
        assert here["host"] == socket.gethostname()
        assert sorted(os.listdir(on_node["run_dir"])) == sorted(os.listdir(here["run_dir"]))
    assert set(os.listdir(tcg["run_dir"])) >= RUN_FILES
    assert sorted(os.listdir(slurm_dir)) == sorted([*os.listdir(local_dir), "slurm"])
    jobs = sorted(os.listdir(slurm_dir / "slurm"))
    assert [name for name in jobs if not name.endswith(".out")] == ["kvm_arm64.sh", "tcg.sh"]
    assert len(jobs) == 4, "one Slurm output file per array task"
    slurm_junit, local_junit = (ET.parse(directory / "junit.xml").getroot() for directory in (slurm_dir, local_dir))
    assert [(suite.get("name"), suite.get("tests"), suite.get("failures")) for suite in slurm_junit] == [
        (suite.get("name"), suite.get("tests"), suite.get("failures")) for suite in local_junit]
    assert "FAIL m: 1 ERROR, 1 FAIL" in on_slurm.stdout and "FAIL m: 1 ERROR, 1 FAIL" in local.stdout


@guest
def test_a_timed_out_cell_is_an_error_that_kept_its_results_and_left_no_qemu(slurm_cluster, tmp_path):
    """`scontrol update TimeLimit=0` ends a running job as TIMEOUT at slurmctld's next limit check (30 s or
    less): SIGTERM reaches `lab cell`, which stops its guest and writes its results before SIGKILL."""
    matrix = _matrix(tmp_path, IDLE, "accelerators: [tcg]\n", name="timeout")
    lab = _start_lab(_env(slurm_cluster), "run", "--matrix", str(matrix), "--engine", "slurm",
                     "--runs-dir", str(tmp_path / "runs"))
    try:
        wait_until(lambda: any((tmp_path / "runs").glob("*/idle*")), 60, "the cell's run directory")
        [run_dir] = (tmp_path / "runs").glob("*/idle*")
        task = _running_with_console(slurm_cluster, f"lab-{run_dir.parent.name}-tcg", run_dir)
        slurm_cluster.run(["scontrol", "update", f"JobId={task}", "TimeLimit=0"])
        err = lab.communicate(timeout=150)[1]
    finally:
        lab.kill()
    assert lab.returncode == 1, err
    _, summary = _summary(tmp_path / "runs")
    [cell] = summary["cells"]
    assert (cell["status"], cell["host"]) == ("ERROR", "tcg1")
    assert cell["reason"].startswith(f"slurm job {task} TIMEOUT on tcg1 at its time limit")
    assert "DUE TO TIME LIMIT" in cell["reason"]
    assert set(os.listdir(run_dir)) >= RUN_FILES
    assert RunDirectory(run_dir).read_result()["verdict"]["reason"] == "interrupted"
    assert [job["state"] for job in _jobs(slurm_cluster, f"lab-{run_dir.parent.name}-tcg")] == ["TIMEOUT"]
    assert not _qemu_of(run_dir)


@guest
def test_ctrl_c_cancels_the_matrix_s_jobs_and_the_report_says_so(slurm_cluster, tmp_path):
    """With one worker, the first cell runs and the second waits in the array; Ctrl-C cancels both."""
    matrix = _matrix(tmp_path, IDLE, "accelerators: [tcg]\npersonalities: [kvm, none]\nworkers: 1\n", name="stop")
    lab = _start_lab(_env(slurm_cluster), "run", "--matrix", str(matrix), "--engine", "slurm",
                     "--runs-dir", str(tmp_path / "runs"))
    try:
        wait_until(lambda: any((tmp_path / "runs").glob("*/idle*psci=kvm*")), 60, "the first cell's run directory")
        [run_dir] = (tmp_path / "runs").glob("*/idle*psci=kvm*")
        job_name = f"lab-{run_dir.parent.name}-tcg"
        task = _running_with_console(slurm_cluster, job_name, run_dir)
        lab.send_signal(signal.SIGINT)
        out, err = lab.communicate(timeout=150)
    finally:
        lab.kill()
    assert lab.returncode == 130, err
    assert "lab: interrupted" in err
    assert {job["state"] for job in _jobs(slurm_cluster, job_name)} == {"CANCELLED"}
    summary = _summary(tmp_path / "runs")[1]
    assert [(cell["status"], cell["reason"], cell["host"]) for cell in summary["cells"]] == [
        ("INTERRUPTED", f"cancelled by Ctrl-C: slurm job {task} CANCELLED on tcg1", "tcg1"),
        ("NOT-RUN", "interrupted before it started", None)]
    assert "cancelled by Ctrl-C" in out and "1 INTERRUPTED, 1 NOT-RUN" in out
    assert set(os.listdir(run_dir)) >= RUN_FILES
    assert not _qemu_of(run_dir)


def test_a_cell_whose_job_cannot_start_is_an_error_and_its_job_is_cancelled(slurm_cluster, tmp_path):
    """A partition that is down keeps a job pending; after the matrix's start_timeout the cell is an ERROR."""
    matrix = _matrix(tmp_path, QUICK_FAIL.format(seconds=1), "accelerators: [kvm]\nslurm: {start_timeout: 3}\n")
    slurm_cluster.run(["scontrol", "update", "PartitionName=kvm_arm64", "State=DOWN"])
    try:
        done = _lab(_env(slurm_cluster), "run", "--matrix", str(matrix), "--engine", "slurm",
                    "--runs-dir", str(tmp_path / "runs"), timeout=60)
    finally:
        slurm_cluster.run(["scontrol", "update", "PartitionName=kvm_arm64", "State=UP"])
    assert done.returncode == 1, done.stderr
    directory, summary = _summary(tmp_path / "runs")
    [cell] = summary["cells"]
    assert (cell["status"], cell["host"], cell["start"]) == ("ERROR", None, None)
    assert cell["reason"].startswith("never started: partition down (slurm job ")
    assert cell["reason"].endswith(" was pending with reason PartitionDown for 3s, then cancelled)")
    assert [job["state"] for job in _jobs(slurm_cluster, f"lab-{directory.name}-kvm_arm64")] == ["CANCELLED"]
    suites = ET.parse(directory / "junit.xml").getroot()
    assert (suites.get("tests"), suites.get("failures")) == ("1", "1")


def test_a_partition_sbatch_refuses_makes_every_cell_an_error(slurm_cluster, tmp_path):
    matrix = _matrix(tmp_path, QUICK_FAIL.format(seconds=1), "accelerators: [tcg]\n")
    done = _lab(_env(slurm_cluster), "run", "--matrix", str(matrix), "--engine", "slurm", "--partition", "nosuch",
                "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert done.returncode == 1, done.stderr
    _, summary = _summary(tmp_path / "runs")
    [cell] = summary["cells"]
    assert cell["status"] == "ERROR"
    assert re.fullmatch(r"never started: could not submit the tcg cells, asking for `-C tcg -p nosuch --time=\d+ "
                        r"--cpus-per-task=\d+ --mem=\d+M`: sbatch exited 1: sbatch: error: Batch job submission "
                        r"failed: Invalid partition name specified", cell["reason"]), cell["reason"]


def test_a_refusal_names_what_the_lab_asked_for(slurm_cluster, tmp_path):
    """Nodes without the RealMemory a cell asks for: Slurm's refusal alone does not say what was asked."""
    scenario = QUICK_FAIL.format(seconds=1).replace("steps:", "memory_mib: 8192\nsteps:")
    matrix = _matrix(tmp_path, scenario, "accelerators: [tcg]\n")
    done = _lab(_env(slurm_cluster), "run", "--matrix", str(matrix), "--engine", "slurm",
                "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert done.returncode == 1, done.stderr
    [cell] = _summary(tmp_path / "runs")[1]["cells"]
    assert cell["status"] == "ERROR"
    assert f"--mem={8192 + QEMU_OVERHEAD_MIB}M" in cell["reason"] and "-C tcg" in cell["reason"], cell["reason"]
    assert "Requested node configuration is not available" in cell["reason"], cell["reason"]


@guest
def test_without_a_shared_runs_directory_the_job_copies_its_run_back(slurm_cluster, tmp_path):
    """The site's lab config names node scratch and the copy-back command; here both ends are this machine."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"slurm:\n  stage: {scratch}\n  copy_back: cp -a \"$LAB_RUN_DIR\" \"$LAB_DEST\"\n")
    matrix = _matrix(tmp_path, QUICK_FAIL.format(seconds=1), "accelerators: [tcg]\n")
    done = _lab(_env(slurm_cluster, config), "run", "--matrix", str(matrix), "--engine", "slurm",
                "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 1, done.stderr
    summary = _summary(tmp_path / "runs")[1]
    [cell] = summary["cells"]
    assert (cell["status"], _without_console_tail(cell["reason"]), cell["host"]) == (
        "FAIL", "timed out after 1.0s waiting for boot1 to become ready", "tcg1")
    assert set(os.listdir(cell["run_dir"])) >= RUN_FILES
    assert "lab: copying the run directory back" in RunDirectory(Path(cell["run_dir"])).output_log.read_text()
    assert [path.name for path in scratch.iterdir()] == [path.name for path in scratch.glob("tcg-*_0.out")], \
        "only Slurm's own output stays in the node's scratch"


@guest
def test_lab_scenario_on_slurm_shows_its_output_live_and_passes_its_exit_status(slurm_cluster, tmp_path):
    scenario = tmp_path / "never-resumed.yaml"
    scenario.write_text(NEVER_RESUMED)
    env = _env(slurm_cluster)
    srun = _start_lab(env, "scenario", str(scenario), "--engine", "slurm", "--runs-dir", str(tmp_path / "runs"))
    try:
        assert srun.stdout is not None
        first = srun.stdout.readline()
        still_running = srun.poll() is None
        rest, err = srun.communicate(timeout=120)
    finally:
        srun.kill()
    assert first.startswith("quick-fail on debian-arm64 (tcg")
    assert still_running, "the first line came only when the run had ended"
    assert srun.returncode == 1, err
    assert "FAIL boot1 came up resumed: boot1 came up fresh, expected resumed" in rest
    assert "lab: on Slurm: srun --job-name=lab-quick-fail -C tcg -p tcg --time=6 " in err
    assert [(job["state"], job["node"]) for job in _jobs(slurm_cluster, "lab-quick-fail")] == [("FAILED", "tcg1")]

    works, why_not = kvm_status("aarch64")
    on_kvm = _lab(env, "scenario", str(scenario), "--engine", "slurm", "--accel", "kvm",
                  "--runs-dir", str(tmp_path / "runs"))
    assert on_kvm.returncode == (1 if works else 2), on_kvm.stderr
    assert works or f"lab: error: --accel kvm is not possible here: {why_not}" in on_kvm.stderr
    assert ("FAILED", "kvm1") in [(job["state"], job["node"]) for job in _jobs(slurm_cluster, "lab-quick-fail")]
