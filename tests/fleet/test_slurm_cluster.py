"""What the Slurm engine relies on, checked on a real local cluster (docs/slurm-findings.md has the figures).

Each fact here is one the engine builds on: where array tasks run, how the controller learns a task's final
state without accounting, that SIGTERM reaches the cell process in time for its cleanup, and that the
cluster itself leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support import slurm_cluster as support
from tests.support.slurm_cluster import (
    LocalSlurmCluster,
    SlurmClusterError,
    SlurmNodeSpec,
    SlurmNotInstalled,
    marked_processes,
    wait_until,
)

slurm = pytest.mark.slurm

# Stands for `lab cell`: on SIGTERM it logs, stops its own child and exits 143, as the cell's cleanup must.
CELL = textwrap.dedent(
    """\
    import os, signal, subprocess, sys, time
    log = open(sys.argv[1], "a", buffering=1)
    child = subprocess.Popen(["sleep", "1000"])
    def cleanup(number, frame):
        log.write(f"SIGTERM child_running={child.poll() is None}\\n")
        child.terminate()
        child.wait()
        time.sleep(0.3)
        log.write("cleanup done\\n")
        sys.exit(143)
    signal.signal(signal.SIGTERM, cleanup)
    log.write(f"started on {os.environ['SLURMD_NODENAME']}\\n")
    while True:
        time.sleep(0.2)
    """
)


def _cell(cluster: LocalSlurmCluster) -> Path:
    path = cluster.directory / "cell.py"
    if not path.exists():
        path.write_text(CELL)
    return path


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _running(record: dict[str, str]) -> bool:
    return record["JobState"] == "RUNNING"


@slurm
def test_cluster_lives_in_its_own_directory(slurm_cluster: LocalSlurmCluster) -> None:
    conf = slurm_cluster.conf_path.read_text()
    assert f"AuthInfo=socket={slurm_cluster.munge_socket}\n" in conf
    assert "/etc/" not in conf
    assert slurm_cluster.env["SLURM_CONF"] == str(slurm_cluster.conf_path)
    nodes = slurm_cluster.run(["sinfo", "--noheader", "--Node", "--format=%N %P %f %t"]).stdout.split("\n")
    assert sorted(line for line in nodes if line) == ["kvm1 kvm_arm64 kvm_arm64 idle", "tcg1 tcg tcg idle"]
    assert slurm_cluster.partitions == {"tcg": ("tcg1",), "kvm_arm64": ("kvm1",)}
    assert slurm_cluster.features() == {"tcg1": ("tcg",), "kvm1": ("kvm_arm64",)}
    assert len(set(slurm_cluster.ports.values())) == 3


@slurm
def test_array_tasks_run_on_the_node_with_the_feature(slurm_cluster: LocalSlurmCluster) -> None:
    out = slurm_cluster.directory / "features"
    out.mkdir()
    script = "#!/bin/sh\necho $SLURMD_NODENAME > " + str(out) + "/$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID\n"
    for feature, node in (("tcg", "tcg1"), ("kvm_arm64", "kvm1")):
        job = slurm_cluster.submit(["--array=0-2", "-C", feature, "-p", feature, "--output=/dev/null"], script)
        records = slurm_cluster.wait_for_jobs(job, timeout=60)
        assert sorted(record["ArrayTaskId"] for record in records) == ["0", "1", "2"]
        assert {(record["JobState"], record["NodeList"], record["BatchHost"]) for record in records} == {
            ("COMPLETED", node, node)
        }
        assert {(out / f"{job}-{task}").read_text() for task in range(3)} == {f"{node}\n"}


@slurm
def test_final_state_and_exit_code_without_accounting(slurm_cluster: LocalSlurmCluster) -> None:
    """scontrol keeps finished jobs for MinJobAge; jobcomp/filetxt writes one line per job or array task."""
    ok = slurm_cluster.submit(["-p", "tcg", "--output=/dev/null", "--wrap", "true"])
    failed = slurm_cluster.submit(["-p", "kvm_arm64", "--array=4", "--output=/dev/null", "--wrap", "exit 7"])
    [ok_record] = slurm_cluster.wait_for_jobs(ok, timeout=30)
    [failed_record] = slurm_cluster.wait_for_jobs(failed, timeout=30)
    assert (ok_record["JobState"], ok_record["ExitCode"]) == ("COMPLETED", "0:0")
    assert (failed_record["JobState"], failed_record["ExitCode"], failed_record["Reason"]) == (
        "FAILED",
        "7:0",
        "NonZeroExitCode",
    )
    listed = slurm_cluster.run(["squeue", "--states=all", "--noheader", "--format=%i %T %N"]).stdout.split("\n")
    assert f"{ok} COMPLETED tcg1" in listed
    assert f"{failed}_4 FAILED kvm1" in listed
    jobcomp = {(record.get("ArrayJobId") or record["JobId"]): record for record in slurm_cluster.jobcomp_records()}
    assert (jobcomp[str(ok)]["JobState"], jobcomp[str(ok)]["NodeList"]) == ("COMPLETED", "tcg1")
    assert (jobcomp[str(failed)]["JobState"], jobcomp[str(failed)]["ArrayTaskId"]) == ("FAILED", "4")
    assert jobcomp[str(failed)]["ExitCode"] == "7:0"


@slurm
def test_time_limit_sigterm_reaches_the_cell_and_its_cleanup_runs(slurm_cluster: LocalSlurmCluster) -> None:
    """--time=1 ends a job 60-90 s after it starts (slurmctld checks limits about every 30 s); SIGTERM reaches
    every process of the job, so the cell's cleanup runs whether the script execs it, runs it as a child,
    or starts it with srun. --signal=B:TERM@30 warns the batch shell earlier; exiting on it is FAILED."""
    cell = _cell(slurm_cluster)
    logs = slurm_cluster.directory / "time-limit"
    logs.mkdir()
    scripts = {
        "exec": ("tcg", [], f"exec python3 {cell} {logs}/exec"),
        "srun": ("tcg", [], f"srun python3 {cell} {logs}/srun"),
        "child": ("kvm_arm64", [], f"python3 {cell} {logs}/child\necho after"),
        "signal": ("kvm_arm64", ["--signal=B:TERM@30"], f"exec python3 {cell} {logs}/signal"),
    }
    jobs = {
        name: slurm_cluster.submit(
            ["-p", partition, "--time=1", f"--output={logs}/{name}.out", *extra], f"#!/bin/sh\n{command}\n"
        )
        for name, (partition, extra, command) in scripts.items()
    }
    records = {name: slurm_cluster.wait_for_jobs(job, timeout=150)[0] for name, job in jobs.items()}
    for name in ("exec", "srun", "child"):
        record = records[name]
        assert (record["JobState"], record["Reason"]) == ("TIMEOUT", "TimeLimit"), name
        assert 60 <= _seconds(record["StartTime"], record["EndTime"]) <= 100, name
        assert (logs / name).read_text().splitlines()[-1] == "cleanup done", name
    assert "DUE TO TIME LIMIT" in (logs / "exec.out").read_text()
    signalled = records["signal"]
    assert (signalled["JobState"], signalled["ExitCode"]) == ("FAILED", "143:0")
    assert _seconds(signalled["StartTime"], signalled["EndTime"]) < 60
    assert (logs / "signal").read_text().splitlines()[-1] == "cleanup done"


@slurm
def test_scancel_of_an_array_sigterms_every_task(slurm_cluster: LocalSlurmCluster) -> None:
    cell = _cell(slurm_cluster)
    logs = slurm_cluster.directory / "cancel"
    logs.mkdir()
    script = f"#!/bin/sh\nexec python3 {cell} {logs}/$SLURM_ARRAY_TASK_ID\n"
    job = slurm_cluster.submit(["-p", "kvm_arm64", "--array=0-1", "--output=/dev/null"], script)
    slurm_cluster.wait_for_jobs(job, timeout=30, done=_running)
    wait_until(lambda: all((logs / task).exists() for task in "01"), 10, "both tasks to log their start")
    started = time.monotonic()
    slurm_cluster.run(["scancel", str(job)])
    records = slurm_cluster.wait_for_jobs(job, timeout=30)
    assert time.monotonic() - started < 10
    assert {(record["JobState"], record["ExitCode"]) for record in records} == {("CANCELLED", "143:0")}
    for task in "01":
        assert (logs / task).read_text().splitlines()[-1] == "cleanup done"
    cancelled = [record for record in slurm_cluster.jobcomp_records() if record.get("ArrayJobId") == str(job)]
    assert sorted((record["ArrayTaskId"], record["JobState"]) for record in cancelled) == [
        ("0", "CANCELLED"),
        ("1", "CANCELLED"),
    ]


@slurm
def test_job_in_a_down_partition_stays_pending_with_a_reason(slurm_cluster: LocalSlurmCluster) -> None:
    slurm_cluster.run(["scontrol", "update", "PartitionName=kvm_arm64", "State=DOWN"])
    try:
        job = slurm_cluster.submit(["-p", "kvm_arm64", "--output=/dev/null", "--wrap", "true"])
        time.sleep(3)  # several scheduler passes (sched_interval=1, bf_interval=1)
        [record] = slurm_cluster.jobs(job)
        assert (record["JobState"], record["Reason"]) == ("PENDING", "PartitionDown")
        slurm_cluster.run(["scancel", str(job)])
        [record] = slurm_cluster.wait_for_jobs(job, timeout=10)
        assert (record["JobState"], record["NodeList"]) == ("CANCELLED", "")
        [logged] = [line for line in slurm_cluster.jobcomp_records() if line["JobId"] == str(job)]
        assert (logged["JobState"], logged["NodeList"]) == ("CANCELLED", "(null)")
    finally:
        slurm_cluster.run(["scontrol", "update", "PartitionName=kvm_arm64", "State=UP"])


@slurm
def test_srun_passes_live_output_and_exit_status(slurm_cluster: LocalSlurmCluster) -> None:
    command = [
        "srun",
        "-C",
        "kvm_arm64",
        "-p",
        "kvm_arm64",
        "sh",
        "-c",
        "echo hi; sleep 2; echo $SLURMD_NODENAME; exit 3",
    ]
    started = time.monotonic()
    with subprocess.Popen(command, env=slurm_cluster.env, stdout=subprocess.PIPE, text=True) as srun:
        assert srun.stdout is not None
        assert srun.stdout.readline() == "hi\n"
        first_line_after = time.monotonic() - started
        rest, _ = srun.communicate(timeout=30)
    assert first_line_after < 1.5, "the first line came only when the task ended"
    assert (rest, srun.returncode) == ("kvm1\n", 3)


@slurm
def test_batch_script_from_stdin_or_wrap_and_where_output_goes(slurm_cluster: LocalSlurmCluster) -> None:
    """Without --output, slurm-%j.out lands in sbatch's working directory (on the node's filesystem)."""
    work = slurm_cluster.directory / "submit-dir"
    work.mkdir()
    submitted = subprocess.run(
        ["sbatch", "--parsable", "-p", "tcg"],
        input="#!/bin/sh\necho out; echo err >&2\n",
        env=slurm_cluster.env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job = int(submitted.stdout)
    slurm_cluster.wait_for_jobs(job, timeout=30)
    assert (work / f"slurm-{job}.out").read_text() == "out\nerr\n"
    wrapped = slurm_cluster.submit(
        ["-p", "tcg", "--array=0-1", f"--output={work}/%A_%a.out", f"--error={work}/%A_%a.err", "--wrap", "echo o"]
    )
    slurm_cluster.wait_for_jobs(wrapped, timeout=30)
    assert (work / f"{wrapped}_1.out").read_text() == "o\n"
    assert (work / f"{wrapped}_1.err").read_text() == ""


@slurm
def test_submission_to_start_is_quick_on_an_idle_node(slurm_cluster: LocalSlurmCluster) -> None:
    """A guard against a settings regression (defaults took 2.5 s median here), not a benchmark."""
    mark = slurm_cluster.directory / "started-at"
    submitted = time.time()
    job = slurm_cluster.submit(
        ["-p", "tcg", "--output=/dev/null", "--wrap", f"date +%s.%N > {mark}.tmp; mv {mark}.tmp {mark}"]
    )
    wait_until(mark.exists, 15, "the job to start")
    slurm_cluster.wait_for_jobs(job, timeout=15)
    assert float(mark.read_text()) - submitted < 5


@slurm
def test_lost_node_ends_its_job_as_node_fail() -> None:
    """SIGKILL of a slurmd: after SlurmdTimeout the node is DOWN and its job NODE_FAIL (about 9 s here with
    SlurmdTimeout=2). By default Slurm requeues such a batch job; --no-requeue keeps NODE_FAIL final."""
    with LocalSlurmCluster(settings={"SlurmdTimeout": "2", "MessageTimeout": "2"}) as cluster:
        final = cluster.submit(["-p", "kvm_arm64", "--no-requeue", "--output=/dev/null", "--wrap", "sleep 300"])
        requeued = cluster.submit(["-p", "tcg", "--output=/dev/null", "--wrap", "sleep 300"])
        cluster.wait_for_jobs(final, timeout=30, done=_running)
        cluster.wait_for_jobs(requeued, timeout=30, done=_running)
        lost = time.monotonic()
        cluster.kill_slurmd("kvm1")
        cluster.kill_slurmd("tcg1")
        [record] = cluster.wait_for_jobs(final, timeout=40)
        assert time.monotonic() - lost < 30
        assert (record["JobState"], record["Reason"]) == ("NODE_FAIL", "NodeDown")
        [record] = cluster.wait_for_jobs(requeued, timeout=30, done=lambda record: record["Restarts"] == "1")
        assert record["JobState"] == "PENDING"
        by_job = {record["JobId"]: record["JobState"] for record in cluster.jobcomp_records()}
        assert by_job == {str(final): "NODE_FAIL", str(requeued): "NODE_FAIL"}


def _cgroup_v1_memory_writable() -> bool:
    probe = support.CGROUP_ROOT / "memory" / f"lab-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


@slurm
@pytest.mark.skipif(not _cgroup_v1_memory_writable(), reason="needs a writable cgroup v1 memory controller")
def test_out_of_memory_needs_task_cgroup() -> None:
    """task/none enforces no --mem; task/cgroup with cgroup v1 ConstrainRAMSpace gives OUT_OF_MEMORY."""
    hog = "python3 -c 'bytearray(400 * 1024 * 1024)'"
    cgroup = {"TaskPlugin": "task/cgroup", "ProctrackType": "proctrack/cgroup", "SelectTypeParameters": "CR_CPU_Memory"}
    conf = "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nConstrainRAMSpace=yes\nConstrainSwapSpace=yes\n"
    with LocalSlurmCluster(settings=cgroup, extra_files={"cgroup.conf": conf}) as cluster:
        job = cluster.submit(["-p", "tcg", "--mem=100", "--output=/dev/null", "--wrap", hog])
        [record] = cluster.wait_for_jobs(job, timeout=60)
        assert (record["JobState"], record["Reason"]) == ("OUT_OF_MEMORY", "OutOfMemory")
    assert not list(support.CGROUP_ROOT.glob("*/slurm_tcg1")), "the cluster left its cgroups behind"


@slurm
def test_slurmd_takes_more_cpus_than_the_host_has_only_with_config_overrides() -> None:
    host_cpus = os.cpu_count() or 1
    nodes = (SlurmNodeSpec("tcg1", ("tcg",), "tcg", cpus=host_cpus * 2),)
    with LocalSlurmCluster(nodes) as cluster:
        job = cluster.submit(["-p", "tcg", f"--ntasks={host_cpus * 2}", "--output=/dev/null", "--wrap", "true"])
        assert cluster.wait_for_jobs(job, timeout=30)[0]["JobState"] == "COMPLETED"
    strict = LocalSlurmCluster(nodes, settings={"SlurmdParameters": None})
    try:
        with pytest.raises(SlurmClusterError, match="rejected node"):
            strict.start(timeout=30)
        state = strict.run(["sinfo", "--noheader", "--Node", "--format=%t %E"]).stdout
        assert state.startswith("inval Low socket*core*thread count, Low CPUs")
    finally:
        strict.stop()


@slurm
def test_stop_ends_running_jobs_and_leaves_nothing() -> None:
    cluster = LocalSlurmCluster()
    cluster.start()
    directory = cluster.directory
    job = cluster.submit(["-p", "tcg", "--output=/dev/null", "--wrap", "sleep 300"])
    cluster.wait_for_jobs(job, timeout=30, done=_running)
    cluster.stop()
    assert not cluster.started
    assert not marked_processes(str(directory))
    assert not directory.exists()
    cluster.stop()  # idempotent


@slurm
def test_cluster_dies_with_its_test_process() -> None:
    """Even a SIGKILLed test process leaves no daemon, slurmstepd or job behind: its supervisor sees EOF."""
    script = textwrap.dedent(
        f"""\
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from tests.support.slurm_cluster import LocalSlurmCluster
        cluster = LocalSlurmCluster()
        cluster.start()
        job = cluster.submit(["-p", "tcg", "--output=/dev/null", "--wrap", "sleep 300"])
        cluster.wait_for_jobs(job, timeout=30, done=lambda record: record["JobState"] == "RUNNING")
        print(cluster.directory, flush=True)
        time.sleep(300)
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as doomed:
        assert doomed.stdout is not None
        directory = doomed.stdout.readline().strip()
        assert directory, "the doomed test process did not start its cluster"
        assert {name.split()[1] for name in marked_processes(directory)} >= {"munged", "slurmctld", "slurmd"}
        doomed.send_signal(signal.SIGKILL)
    wait_until(lambda: not marked_processes(directory), 15, "the supervisor to kill the orphaned cluster")
    wait_until(lambda: not Path(directory).exists(), 5, "the supervisor to remove the cluster's directory")


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda command: None if command in ("slurmd", "srun") else command)
    with pytest.raises(SlurmNotInstalled, match=r"Debian packages slurm-client slurmd \(apt-get install"):
        LocalSlurmCluster().start()


@slurm
def test_a_directory_munged_cannot_reach_is_refused_before_anything_starts(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    with pytest.raises(SlurmClusterError, match="traverse to its socket"):
        LocalSlurmCluster(parent_dir=tmp_path).start()
    assert not list(tmp_path.iterdir())
