"""What the Slurm engine relies on and the engine's own tests cannot show, checked on a real local cluster.

The engine's tests (test_slurm_matrix.py) show placement, time limits, cancels, srun and pending jobs through
the lab itself; here remain the facts below them (docs/slurm-findings.md has the figures and the rest): how
the controller learns a job's final state without accounting, that --no-requeue keeps NODE_FAIL final, that
dispatch is quick enough for the tests, and that the cluster itself leaves nothing behind.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.slurm_cluster import (
    LocalSlurmCluster,
    SlurmClusterError,
    SlurmNotInstalled,
    marked_processes,
    wait_until,
)

slurm = pytest.mark.slurm


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
def test_a_submitted_job_starts_on_an_idle_node(slurm_cluster: LocalSlurmCluster) -> None:
    """Order and a bound that holds on a loaded machine; how quick it is (2.5 s median with Slurm's
    defaults, under 1 s with the cluster's settings) is for benchmarks/slurm_vs_local.py to print."""
    mark = slurm_cluster.directory / "started-at"
    submitted = time.time()
    job = slurm_cluster.submit(
        ["-p", "tcg", "--output=/dev/null", "--wrap", f"date +%s.%N > {mark}.tmp; mv {mark}.tmp {mark}"]
    )
    wait_until(mark.exists, 60, "the job to start")
    slurm_cluster.wait_for_jobs(job, timeout=60)
    assert submitted <= float(mark.read_text()) <= time.time()


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


@slurm
def test_stop_ends_running_jobs_and_leaves_nothing() -> None:
    cluster = LocalSlurmCluster()
    try:
        cluster.start()
        directory = cluster.directory
        job = cluster.submit(["-p", "tcg", "--output=/dev/null", "--wrap", "sleep 300"])
        cluster.wait_for_jobs(job, timeout=30, done=_running)
    finally:
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
