"""A real, throwaway Slurm cluster on 127.0.0.1 for tests: munged, slurmctld and one slurmd per node.

Everything lives in one private temporary directory (config, munge key and socket, state, spool, logs), so
the cluster never touches /etc/slurm, /etc/munge or a cluster the host may already run. Every daemon runs
under a subreaper (slurm_supervisor.py) that kills whatever the cluster started if the test process dies
without tearing it down, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pytest

# Which Debian package brings each command the cluster needs.
REQUIRED_COMMANDS: Mapping[str, str] = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "squeue": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
    "sinfo": "slurm-client",
}

# Every daemon (and every client run through LocalSlurmCluster.env) carries this variable, set to the
# cluster's directory: the process table then tells which processes belong to which cluster.
MARKER_ENV = "LAB_SLURM_CLUSTER"

CGROUP_ROOT = Path("/sys/fs/cgroup")

# Job states after which a job will not change any more (scontrol's JobState, without "+" suffixes).
FINAL_JOB_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)


class SlurmClusterError(RuntimeError):
    """The local cluster could not be started, used or torn down."""


class SlurmNotInstalled(SlurmClusterError):
    """The host lacks the Debian packages the cluster needs; this module installs nothing itself."""


@dataclass(frozen=True)
class SlurmNodeSpec:
    """One slurmd of the cluster; every node sits in the partition of its host class."""

    name: str
    features: tuple[str, ...]
    partition: str
    cpus: int = 1
    real_memory_mb: int = 1024


DEFAULT_NODES: tuple[SlurmNodeSpec, ...] = (
    SlurmNodeSpec("tcg1", ("tcg",), "tcg"),
    SlurmNodeSpec("kvm1", ("kvm_arm64",), "kvm_arm64"),
)

# Settings chosen for fast, predictable tests; docs/slurm-findings.md says why each one is there.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "ClusterName": "lab",
    "SlurmUser": "root",
    "SlurmdUser": "root",
    "AuthType": "auth/munge",
    "CredType": "cred/munge",
    "ProctrackType": "proctrack/linuxproc",
    "TaskPlugin": "task/none",
    "JobAcctGatherType": "jobacct_gather/none",
    "AccountingStorageType": "accounting_storage/none",
    "JobCompType": "jobcomp/filetxt",
    "SelectType": "select/cons_tres",
    "SelectTypeParameters": "CR_CPU",
    "SchedulerType": "sched/backfill",
    "SchedulerParameters": "sched_interval=1,bf_interval=1,sched_min_interval=0,batch_sched_delay=0",
    "SlurmdParameters": "config_overrides",
    "ReturnToService": "2",
    "MpiDefault": "none",
    "MailProg": "/bin/true",
    "MinJobAge": "600",
    "KillWait": "2",
    "OverTimeLimit": "0",
    "InactiveLimit": "0",
    "MessageTimeout": "5",
    "SlurmdTimeout": "5",
    "SlurmctldDebug": "info",
    "SlurmdDebug": "info",
}


def missing_packages() -> list[str]:
    """Debian packages to install before a cluster can start (empty when all are there)."""
    return sorted({package for command, package in REQUIRED_COMMANDS.items() if shutil.which(command) is None})


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on right now (all bound at once, so the
    kernel cannot hand out one twice)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll until predicate() holds; raise naming `what` if it did not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise SlurmClusterError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One `scontrol -o show …` line as a dict; values may contain spaces (e.g. Command=sh -c 'x')."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s[A-Za-z][A-Za-z0-9_:/]*=|$)", line.strip()))


# --- the process table: the cluster checks it after teardown, independently of its supervisor ------------------


def marked_processes(marker: str) -> list[str]:
    """Live processes ("PID COMM") whose environment carries the cluster's marker.

    slurmstepd inherits slurmd's environment, and jobs submitted with LocalSlurmCluster.env carry it too.
    """
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if tail.split()[0] != "Z" and needle in environ and int(stat.parent.name) != os.getpid():
            found.append(f"{stat.parent.name} {head.split('(', 1)[1]}")
    return found


class _Supervisor:
    """Client of slurm_supervisor.py, the subreaper under which every process of the cluster runs."""

    def __init__(self, directory: Path, log: Path) -> None:
        with log.open("ab") as errors:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("slurm_supervisor.py")), str(directory)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                # Own session: a Ctrl-C at the terminal must not stop the daemons before teardown cancels jobs.
                start_new_session=True,
            )
        self._pending = b""

    def request(self, timeout: float = 10.0, **message: object) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.process.stdout], [], [], max(0.0, remaining))
            if not readable:
                raise SlurmClusterError(f"the cluster's supervisor did not answer {message['op']!r} in {timeout:g} s")
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise SlurmClusterError(f"the cluster's supervisor exited ({self.process.poll()}) during {message}")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def spawn(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> int:
        return int(self.request(op="spawn", name=name, argv=argv, env=env, log=str(log))["pid"])

    def exited(self) -> dict[str, int]:
        return dict(self.request(op="status")["exited"])

    def shutdown(self, grace: float) -> list[str]:
        """Kill everything below the supervisor; return what survived SIGKILL (normally nothing)."""
        left = list(self.request(op="shutdown", grace=grace, timeout=grace + 15.0)["left"])
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired as error:
            self.process.kill()
            self.process.wait(timeout=5)
            raise SlurmClusterError("the cluster's supervisor did not exit within 10 s of shutting down") from error
        return left

    def kill(self) -> None:
        """Last resort when the supervisor does not answer: its EOF path still kills what it started."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


# --- the cluster -------------------------------------------------------------------------------------------------


class LocalSlurmCluster:
    """munged + slurmctld + one slurmd per node, all on 127.0.0.1 and in one private directory.

    Use as a context manager (or start()/stop()). stop() is safe after a failed or partial start().
    """

    def __init__(
        self,
        nodes: Sequence[SlurmNodeSpec] = DEFAULT_NODES,
        *,
        settings: Mapping[str, str | None] | None = None,
        extra_files: Mapping[str, str] | None = None,
        parent_dir: Path | None = None,
    ) -> None:
        """`settings` override or extend DEFAULT_SETTINGS (None drops one); `extra_files` go beside slurm.conf.

        `parent_dir` (default: the system's temporary directory) and its ancestors must be traversable by
        everyone: munged refuses a socket below a directory that is not (pytest's tmp_path is 0700).
        """
        if not nodes:
            raise ValueError("a cluster needs at least one node")
        self.nodes: tuple[SlurmNodeSpec, ...] = tuple(nodes)
        merged = {**DEFAULT_SETTINGS, **(settings or {})}
        self.settings: dict[str, str] = {key: value for key, value in merged.items() if value is not None}
        self.extra_files: dict[str, str] = dict(extra_files or {})
        self.partitions: dict[str, tuple[str, ...]] = {}
        for node in self.nodes:
            self.partitions[node.partition] = (*self.partitions.get(node.partition, ()), node.name)
        self._parent_dir = parent_dir
        self._directory: Path | None = None
        self.ports: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self._supervisor: _Supervisor | None = None
        self._cgroups_before: set[Path] = set()

    # -- paths and environment

    @property
    def started(self) -> bool:
        return self._directory is not None

    @property
    def directory(self) -> Path:
        """The cluster's private directory; tests may put their files in it, it goes at stop()."""
        if self._directory is None:
            raise SlurmClusterError("the cluster has not been started")
        return self._directory

    @property
    def conf_path(self) -> Path:
        return self.directory / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.directory / "run" / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.directory / "log"

    @property
    def jobcomp_path(self) -> Path:
        return self.directory / "jobcomp.txt"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (sbatch, srun, squeue, scancel, scontrol, sinfo) of this cluster.

        Outer SLURM_*/SBATCH_* variables are dropped so a test run inside a Slurm job cannot leak into it.
        """
        env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SBATCH_"))}
        env["SLURM_CONF"] = str(self.conf_path)
        env[MARKER_ENV] = str(self.directory)
        return env

    def features(self) -> dict[str, tuple[str, ...]]:
        """Node name -> its features."""
        return {node.name: node.features for node in self.nodes}

    # -- lifecycle

    def __enter__(self) -> LocalSlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Start munged, slurmctld and every slurmd; return once `sinfo` shows every node idle."""
        missing = missing_packages()
        if missing:
            raise SlurmNotInstalled(
                "a local Slurm cluster needs the Debian packages "
                + " ".join(missing)
                + " (apt-get install --no-install-recommends slurmctld slurmd slurm-client munge)"
            )
        if self.started:
            raise SlurmClusterError("the cluster was already started")
        parent = Path(self._parent_dir or tempfile.gettempdir()).resolve()
        closed = [str(path) for path in (parent, *parent.parents) if not path.stat().st_mode & 0o001]
        if closed:
            raise SlurmClusterError(f"munged needs everyone to traverse to its socket, but not {closed}")
        self._directory = Path(tempfile.mkdtemp(prefix="lab-slurm-", dir=parent))
        self._cgroups_before = self._cgroups()
        self._write_files()
        self._supervisor = _Supervisor(self.directory, self.log_dir / "supervisor.log")
        deadline = time.monotonic() + timeout
        self._spawn("munged", self._munged_argv())
        self._wait_daemon(lambda: self.munge_socket.exists(), deadline, "munged to create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D"])
        self._wait_daemon(self._controller_up, deadline, "slurmctld to answer `scontrol ping`")
        for node in self.nodes:
            self._spawn(f"slurmd-{node.name}", ["slurmd", "-D", "-N", node.name])
        self._wait_daemon(self._all_nodes_idle, deadline, "every node to be idle in `sinfo`")

    def stop(self, timeout: float = 15.0) -> None:
        """Cancel jobs, stop the daemons in reverse order, kill what is left, check the process table, remove
        the directory. Raises SlurmClusterError if any process of the cluster survived.
        """
        if not self.started:
            return
        marker = str(self.directory)
        supervisor, self._supervisor = self._supervisor, None
        left: list[str] = []
        if supervisor is not None:
            try:
                if "slurmctld" in self.pids and "slurmctld" not in supervisor.exited():
                    self._cancel_all_jobs(timeout=timeout / 3)
                for name in reversed(list(self.pids)):
                    self._terminate(supervisor, name, grace=timeout / 3)
                left = supervisor.shutdown(grace=timeout / 3)
            finally:
                supervisor.kill()
        left += [proc for proc in marked_processes(marker) if proc not in left]
        if left:
            raise SlurmClusterError(f"processes of the Slurm cluster in {marker} survived SIGKILL: {left}")
        self._remove_cgroups()
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.directory.exists():
            raise SlurmClusterError(f"could not remove {self.directory}")
        self._directory = None
        self.pids.clear()

    # -- clients

    def run(
        self, args: Sequence[str], *, timeout: float = 30.0, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client against this cluster; raise on timeout, and on failure when check is set."""
        try:
            result = subprocess.run(
                list(args), env=self.env, input=input, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as error:
            raise SlurmClusterError(f"`{' '.join(args)}` did not finish within {timeout:g} s") from error
        if check and result.returncode != 0:
            raise SlurmClusterError(
                f"`{' '.join(args)}` exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def submit(self, args: Sequence[str], script: str | None = None, timeout: float = 30.0) -> int:
        """sbatch --parsable with `args`, the script on stdin unless args hold --wrap; returns the job id."""
        result = self.run(["sbatch", "--parsable", *args], input=script, timeout=timeout)
        return int(result.stdout.strip().split(";")[0])

    def jobs(self, job_id: int | str) -> list[dict[str, str]]:
        """`scontrol show job` records of a job, one per array task; empty once slurmctld forgot the job."""
        result = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return []
            raise SlurmClusterError(f"scontrol show job {job_id}: {result.stderr.strip()}")
        return [parse_scontrol_record(line) for line in result.stdout.splitlines() if line.strip()]

    def wait_for_jobs(
        self, job_id: int | str, timeout: float, done: Callable[[dict[str, str]], bool] | None = None
    ) -> list[dict[str, str]]:
        """Poll `scontrol show job` until every record satisfies `done` (default: a final state)."""
        is_done = done or (lambda record: record.get("JobState") in FINAL_JOB_STATES)
        records: list[dict[str, str]] = []

        def reached() -> bool:
            nonlocal records
            records = self.jobs(job_id)
            return bool(records) and all(is_done(record) for record in records)

        try:
            wait_until(reached, timeout, f"job {job_id} to reach the awaited state")
        except SlurmClusterError as error:
            states = [(record.get("JobId"), record.get("JobState"), record.get("Reason")) for record in records]
            raise SlurmClusterError(f"{error}; last seen {states}") from error
        return records

    def jobcomp_records(self) -> list[dict[str, str]]:
        """Lines of the jobcomp/filetxt log (one per finished job or array task)."""
        path = self.jobcomp_path
        if not path.exists():
            return []
        return [parse_scontrol_record(line) for line in path.read_text().splitlines() if line.strip()]

    def kill_slurmd(self, node: str, timeout: float = 10.0) -> None:
        """SIGKILL one node's slurmd, as if its host vanished; its slurmstepds and jobs live on."""
        name = f"slurmd-{node}"
        os.kill(self.pids[name], signal.SIGKILL)
        wait_until(lambda: name in self._require_supervisor().exited(), timeout, f"{name} to die of SIGKILL")

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every daemon log, for error messages."""
        if not self.started or not self.log_dir.exists():
            return "(no logs)"
        parts = []
        for log in sorted(self.log_dir.iterdir()):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def render_conf(self) -> str:
        """slurm.conf for this cluster: private paths, its ports, one partition per host class."""
        directory = self.directory
        settings = {
            "SlurmctldHost": f"{socket.gethostname().split('.')[0]}(127.0.0.1)",
            "SlurmctldPort": str(self.ports["slurmctld"]),
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": str(directory / "state"),
            "SlurmdSpoolDir": str(directory / "spool" / "%n"),
            "SlurmctldPidFile": str(directory / "run" / "slurmctld.pid"),
            "SlurmdPidFile": str(directory / "run" / "slurmd-%n.pid"),
            "SlurmctldLogFile": str(self.log_dir / "slurmctld.log"),
            "SlurmdLogFile": str(self.log_dir / "slurmd-%n.log"),
            "JobCompLoc": str(self.jobcomp_path),
            **self.settings,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        for node in self.nodes:
            lines.append(
                f"NodeName={node.name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={self.ports[node.name]} "
                f"CPUs={node.cpus} RealMemory={node.real_memory_mb} Features={','.join(node.features)} "
                "State=UNKNOWN"
            )
        for partition, names in self.partitions.items():
            lines.append(f"PartitionName={partition} Nodes={','.join(names)} MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    # -- internals

    def _require_supervisor(self) -> _Supervisor:
        if self._supervisor is None:
            raise SlurmClusterError("the cluster is not running")
        return self._supervisor

    def _munged_argv(self) -> list[str]:
        directory = self.directory
        return [
            "munged",
            "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={directory / 'munge' / 'munge.key'}",
            f"--pid-file={directory / 'run' / 'munged.pid'}",
            f"--log-file={self.log_dir / 'munged.log'}",
            f"--seed-file={directory / 'munge' / 'munged.seed'}",
        ]

    def _write_files(self) -> None:
        directory = self.directory
        # munged insists that everyone may traverse to its socket, and that its key is private.
        directory.chmod(0o755)
        for sub, mode in (("etc", 0o755), ("run", 0o755), ("log", 0o755), ("state", 0o700), ("spool", 0o755)):
            (directory / sub).mkdir(mode=mode)
        (directory / "munge").mkdir(mode=0o700)
        key = directory / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        names = ["slurmctld", *(node.name for node in self.nodes)]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.conf_path.write_text(self.render_conf())
        for name, text in self.extra_files.items():
            (self.conf_path.parent / name).write_text(text)

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.pids[name] = self._require_supervisor().spawn(name, argv, self.env, self.log_dir / f"{name}.stderr")

    def _wait_daemon(self, predicate: Callable[[], bool], deadline: float, what: str) -> None:
        supervisor = self._require_supervisor()

        def ready() -> bool:
            exited = supervisor.exited()
            if exited:
                raise SlurmClusterError(f"daemons exited (name: status) {exited} while waiting for {what}")
            return predicate()

        try:
            wait_until(ready, max(0.0, deadline - time.monotonic()), what, interval=0.2)
        except SlurmClusterError as error:
            raise SlurmClusterError(f"{error}\n{self.log_tails()}") from None

    def _controller_up(self) -> bool:
        return "is UP" in self.run(["scontrol", "ping"], check=False, timeout=10).stdout

    def _all_nodes_idle(self) -> bool:
        """Whether every node is idle; a node slurmctld found invalid will not become so, and says why."""
        result = self.run(["sinfo", "--noheader", "--Node", "--format=%N|%t|%E"], check=False, timeout=10)
        rows = [line.split("|", 2) for line in result.stdout.splitlines() if line.count("|") == 2]
        invalid = [f"{name}: {reason}" for name, state, reason in rows if state.startswith("inval")]
        if invalid:
            raise SlurmClusterError(f"slurmctld rejected node(s) {invalid}")
        states = {name: state for name, state, _ in rows}
        return all(states.get(node.name) == "idle" for node in self.nodes)

    def _cgroups(self) -> set[Path]:
        """cgroup v1 directories of this cluster's nodes: task/cgroup and proctrack/cgroup make slurm_NODE."""
        return {path for node in self.nodes for path in CGROUP_ROOT.glob(f"*/slurm_{node.name}")}

    def _remove_cgroups(self) -> None:
        """Remove the cgroups this cluster created (they outlive slurmd); leave any that were there before."""
        for top in sorted(self._cgroups() - self._cgroups_before):
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                path.rmdir()
            top.rmdir()

    def cancel_jobs_left(self, timeout: float = 30.0) -> None:
        """Cancel every job a test left in a cluster that outlives it, so the next test finds the nodes free."""
        if self.started:
            self._cancel_all_jobs(timeout)

    def _cancel_all_jobs(self, timeout: float) -> None:
        listed = self.run(["squeue", "--noheader", "--format=%A"], check=False, timeout=10)
        job_ids = sorted(set(listed.stdout.split()))
        if not job_ids:
            return
        self.run(["scancel", *job_ids], check=False, timeout=10)
        # The supervisor's shutdown kills whatever the cancel did not end in time.
        with contextlib.suppress(SlurmClusterError):
            wait_until(
                lambda: not self.run(["squeue", "--noheader", "--states=R,CG", "--format=%A"], check=False).stdout,
                timeout,
                "cancelled jobs to end",
            )

    def _terminate(self, supervisor: _Supervisor, name: str, grace: float) -> None:
        """SIGTERM one daemon; SIGKILL it if it has not exited after `grace` seconds."""
        for number, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if name in supervisor.exited():
                return
            try:
                os.kill(self.pids[name], number)
            except ProcessLookupError:
                return
            try:
                wait_until(lambda: name in supervisor.exited(), wait, f"{name} to exit")
            except SlurmClusterError:
                continue


def slurm_cluster_fixture(
    *,
    scope: Literal["session", "package", "module", "class", "function"] = "module",
    nodes: Sequence[SlurmNodeSpec] = DEFAULT_NODES,
    settings: Mapping[str, str | None] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Callable[..., Iterator[LocalSlurmCluster]]:
    """A pytest fixture yielding a started LocalSlurmCluster and tearing it down after its scope."""

    @pytest.fixture(scope=scope)
    def cluster() -> Iterator[LocalSlurmCluster]:
        with LocalSlurmCluster(nodes, settings=settings, extra_files=extra_files) as started:
            yield started

    return cluster
