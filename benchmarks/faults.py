"""Faults, hangs and hostile input: each case injects one fault into a real run of `lab scenario …` and
prints what the lab made of it: its exit status, the verdict's class and reason, the seconds from the
fault to the verdict, which of result.json, junit.xml and report.html it wrote, and what it left running.

Run: .venv/bin/python benchmarks/faults.py [--only NAME[,NAME]] [--list] [--keep] [--work DIR]

Every case runs `python -m lab.cli scenario NAME --runs-dir DIR` in a runs directory of its own, in a
session of its own (so whatever it leaves can be found and reaped), one guest at a time (two for
`same-disk`, which needs them). Figures are printed, not asserted: a surprising row is a finding to
report, not a failure of this script.

Fault → verdict: from the moment the fault was injected (a signal sent, the lab started with a bad
input, or, for a fault the guest makes itself, the `t` of the step that made it) to the `run-end`
record in events.jsonl. A fault made outside the lab is timed on the wall clock: the run's clock
(`t`, seconds since the run started on the lab's monotonic clock) is placed on the wall clock by the
events file's modification time when `run-end` is its last record.

Leftovers: any process, after the lab has exited, that is in the lab's session, or whose command line
or open files name the run's directory (QEMU's command line names its sockets and disk there). Each
case kills and reaps what it finds, and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.image.store import ImageStore
from lab.paths import REPO_ROOT

PYTHON = sys.executable
LAB_TIMEOUT = 900.0
"""Seconds a run may take before this script calls the lab itself hung and kills its session."""
OOPS_KERNEL = "linux-image-cloud-arm64=6.12.117-1"
ARTIFACTS = {"result.json": "R", "junit.xml": "J", "report.html": "H"}


# -- scenarios the cases need beyond the shipped ones -------------------------------------------------

SCENARIOS = {
    "hibernate-only": """
        name: fault-hibernate-only
        description: Boot, mark and hibernate; the disk is the product.
        psci: kvm
        steps:
          - boot: {expect: fresh}
          - mark
          - hibernate: {expect: hibernate-off2}
        """,
    "resume-only": """
        name: fault-resume-only
        description: Boot a disk that holds a hibernation image and expect a resume.
        psci: kvm
        steps:
          - boot: {expect: resumed}
          - check: {evidence: present}
        """,
    "guest-panic": """
        name: fault-guest-panic
        description: The guest panics while the lab waits on a command.
        psci: kvm
        steps:
          - boot: {expect: fresh}
          - run: {command: "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger", timeout: 120}
          - hibernate: {expect: hibernate-off2}
        """,
    "guest-freeze": """
        name: fault-guest-freeze
        description: The guest suspends to idle with nothing to wake it; it stops answering.
        psci: kvm
        steps:
          - boot: {expect: fresh}
          - run: {command: "echo freeze > /sys/power/state", timeout: 60}
          - hibernate: {expect: hibernate-off2, timeout: 60}
        """,
    "guest-stuck-command": """
        name: fault-guest-stuck-command
        description: A command that never returns.
        psci: kvm
        steps:
          - boot: {expect: fresh}
          - run: {command: "while :; do :; done", timeout: 60}
          - hibernate: {expect: hibernate-off2}
        """,
}


# -- processes ----------------------------------------------------------------------------------------

def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _session(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not stat:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[3])  # state ppid pgrp session


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]


def qemu_pids(run_dir: Path | str) -> list[int]:
    """QEMU processes whose command line names the run directory."""
    needle = str(run_dir).encode()
    return [pid for pid in _pids()
            if _read(f"/proc/{pid}/comm").startswith(b"qemu-system") and needle in _read(f"/proc/{pid}/cmdline")]


def describe(pid: int) -> str:
    comm = _read(f"/proc/{pid}/comm").decode(errors="replace").strip()
    state = _read(f"/proc/{pid}/stat").decode(errors="replace")
    state = state[state.rfind(")") + 2:].split()[0] if state else "?"
    return f"{comm}[{pid}]{state}"


def leftovers(sessions: list[int], directory: Path) -> list[int]:
    """Processes still in one of the lab's sessions, or naming `directory` in their command line or files."""
    needle = str(directory)
    found = []
    for pid in _pids():
        if _session(pid) in sessions or needle.encode() in _read(f"/proc/{pid}/cmdline"):
            found.append(pid)
            continue
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(link.startswith(needle) for link in links):
            found.append(pid)
    return [pid for pid in found if _read(f"/proc/{pid}/stat")  # zombies of ours are reaped below
            and _read(f"/proc/{pid}/stat").decode(errors="replace").split(") ")[-1][:1] != "Z"]


def reap(pids: list[int]) -> None:
    """Kill (and continue, should they be stopped) exactly these processes, and wait until they are gone."""
    for pid in pids:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)
        time.sleep(0.1)


# -- one run of the lab -------------------------------------------------------------------------------

def events(run_dir: Path | None) -> list[dict[str, Any]]:
    if run_dir is None:
        return []
    records = []
    for line in _read(str(run_dir / "events.jsonl")).decode(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


class Run:
    """One `lab scenario` process in a session of its own, watched while it runs."""

    def __init__(self, work: Path, scenario: str, *args: str, env: dict[str, str] | None = None,
                 runs: Path | None = None, python: list[str] | None = None) -> None:
        self.runs = runs or work / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.command = [*(python or [PYTHON, "-m", "lab.cli"]), "scenario", scenario,
                        "--runs-dir", str(self.runs), *args]
        self.log = (work / f"lab-{len(list(work.glob('lab-*.log')))}.log").open("w")
        self.spawned_wall = time.time()
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})
        self.run_end_seen: float | None = None  # wall clock, when the poll first saw `run-end`

    @property
    def run_dir(self) -> Path | None:
        dirs = sorted(path for path in self.runs.iterdir() if path.is_dir()) if self.runs.is_dir() else []
        return dirs[-1] if dirs else None

    def events(self) -> list[dict[str, Any]]:
        return events(self.run_dir)

    def poll(self) -> int | None:
        if self.run_end_seen is None and any(e.get("kind") == "run-end" for e in self.events()):
            self.run_end_seen = time.time()
        return self.process.poll()

    def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 600) -> bool:
        """Poll the events until `condition` holds; False when the lab exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.events()):
                return True
            if self.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def finish(self, timeout: float = LAB_TIMEOUT) -> tuple[int | None, float]:
        """Wait for the lab's exit (killing its session past `timeout`); its exit status and the wall time."""
        deadline = self.spawned + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.log.close()
            return None, time.monotonic() - self.spawned
        self.log.close()
        return self.process.returncode, time.monotonic() - self.spawned

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


def started(kind: str, **match: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda records: any(r.get("kind") == kind and all(r.get(k) == v for k, v in match.items())
                               for r in records)


def open_step(records: list[dict[str, Any]]) -> str:
    """The label of the step running now, from the last step-start without its step-end."""
    starts = [r for r in records if r.get("kind") == "step-start"]
    ends = [r for r in records if r.get("kind") == "step-end"]
    return starts[-1]["label"] if starts and len(starts) > len(ends) else "-"


# -- the table ------------------------------------------------------------------------------------------

@dataclass
class Row:
    case: str
    exit: int | None = None
    status: str = "-"
    classes: str = "-"
    reason: str = "-"
    fault_to_verdict: float | None = None
    artifacts: str = "---"
    leftovers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    wall: float = 0.0


def judge(row: Row, run: Run, exit_status: int | None, wall: float, fault_wall: float | None = None,
          fault_t: float | None = None) -> Row:
    """Fill a row from a finished run. The fault is given on the wall clock, or on the run's own clock `t`."""
    row.exit, row.wall, row.run_dir = exit_status, wall, run.run_dir
    if exit_status is None:
        row.notes.append(f"the lab did not exit within {LAB_TIMEOUT:.0f}s: its session was killed")
    run_dir = run.run_dir
    if run_dir is None:
        row.notes.append("no run directory")
        lab_output = run.output().strip().splitlines()
        row.reason = lab_output[-1] if lab_output else "-"
        return row
    result_path = run_dir / "result.json"
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text())
            verdict = result["verdict"]
            row.status, row.reason = verdict["status"], verdict["reason"]
            row.classes = ",".join(p.get("class", "?") for p in verdict.get("power_offs", [])) or "-"
        except (json.JSONDecodeError, KeyError) as error:
            row.notes.append(f"result.json unreadable: {error}")
    else:
        lab_output = run.output().strip().splitlines()
        row.reason = lab_output[-1] if lab_output else "-"
    row.artifacts = "".join(letter if (run_dir / name).is_file() else "-" for name, letter in ARTIFACTS.items())
    records = events(run_dir)
    end = next((r for r in records if r.get("kind") == "run-end"), None)
    if end is not None:
        if fault_t is not None:
            row.fault_to_verdict = end["t"] - fault_t
        elif fault_wall is not None:
            last = records[-1].get("kind") == "run-end"
            end_wall = (run_dir / "events.jsonl").stat().st_mtime if last else run.run_end_seen
            if end_wall is not None:
                row.fault_to_verdict = end_wall - fault_wall
    elif exit_status is not None:
        row.notes.append("no run-end record in events.jsonl")
    return row


def sweep(row: Row, sessions: list[int], directory: Path) -> None:
    """Record what the runs left behind, then kill and reap it."""
    time.sleep(0.5)  # a QEMU told to die as the lab exits gets half a second
    found = leftovers(sessions, directory)
    row.leftovers = [describe(pid) for pid in found]
    if found:
        row.notes.append(f"left running: {', '.join(row.leftovers)} (killed)")
        reap(found)


# -- the cases ----------------------------------------------------------------------------------------

@dataclass
class Context:
    work: Path
    keep: bool

    def scenario_file(self, name: str) -> str:
        path = self.work / f"{name}.yaml"
        path.write_text(textwrap.dedent(SCENARIOS[name]).lstrip())
        return str(path)


def qemu_signal(phase: str, sig: signal.Signals) -> Callable[[Context], Row]:
    """Send QEMU `sig` in a phase of hibernate-resume: boot (boot1 up 3s), hibernate (2s in), resume (boot2 up 2s)."""
    condition, delay = {
        "boot": (started("qemu-launched", boot="boot1"), 3.0),
        "hibernate": (started("step-start", step="hibernate"), 2.0),
        "resume": (started("qemu-launched", boot="boot2"), 2.0),
    }[phase]

    def case(ctx: Context) -> Row:
        row = Row(f"{sig.name.lower()}-{phase}")
        run = Run(ctx.work, "hibernate-resume")
        fault_wall = None
        if run.wait_for(condition):
            time.sleep(delay)
            assert run.run_dir is not None
            pids = qemu_pids(run.run_dir)
            step = open_step(run.events())
            if pids and run.process.poll() is None:
                for pid in pids:
                    os.kill(pid, sig)
                fault_wall = time.time()
                row.notes.append(f"{sig.name} to QEMU {pids} during `{step}`")
            else:
                row.notes.append(f"no QEMU to signal during `{step}`: the fault was not injected")
        else:
            row.notes.append(f"the run never reached the {phase} phase: the fault was not injected")
        exit_status, wall = run.finish()
        judge(row, run, exit_status, wall, fault_wall=fault_wall)
        sweep(row, [run.process.pid], run.runs)
        return row
    return case


def scenario_case(name: str, scenario: str, fault_step: str | None = None, *args: str,
                  env: Callable[[Context], dict[str, str]] | None = None,
                  setup: Callable[[Context], list[str]] | None = None,
                  runs: Callable[[Context], Path] | None = None,
                  teardown: Callable[[Context], None] | None = None) -> Callable[[Context], Row]:
    """A run whose fault is in its input or made by the guest at step `fault_step` (timed from that step)."""

    def case(ctx: Context) -> Row:
        row = Row(name)
        extra = list(args) + (setup(ctx) if setup else [])
        target = ctx.scenario_file(scenario) if scenario in SCENARIOS else scenario
        runs_dir = runs(ctx) if runs else None
        try:
            run = Run(ctx.work, target, *extra, env=env(ctx) if env else None, runs=runs_dir)
            exit_status, wall = run.finish()
            records = run.events()
            fault_t = None
            if fault_step is not None:
                trouble = _kernel_trouble(run.run_dir)
                step = next((r for r in records if r.get("kind") == "step-start" and r.get("step") == fault_step
                             and (fault_step != "boot" or r.get("label") == "boot expect=resumed")), None)
                fault_t = trouble if trouble is not None else (step or {}).get("t")
                if trouble is not None:
                    row.notes.append(f"timed from the kernel trouble at t={trouble:.1f}s")
            judge(row, run, exit_status, wall, fault_wall=None if fault_step else run.spawned_wall, fault_t=fault_t)
            sweep(row, [run.process.pid], run.runs)
        finally:
            if teardown:
                teardown(ctx)
        return row
    return case


def _kernel_trouble(run_dir: Path | None) -> float | None:
    try:
        troubles = json.loads((run_dir / "result.json").read_text())["observations"]["kernel_troubles"]  # type: ignore[operator]
        return float(troubles[0]["when"]) if troubles else None
    except (OSError, TypeError, KeyError, IndexError, ValueError, json.JSONDecodeError):
        return None


def _truncated(source: Path, target: Path, fraction: float = 0.5) -> Path:
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(src.read(int(source.stat().st_size * fraction)))
    return target


def _image() -> Path:
    image = ImageStore().latest("debian-arm64")
    if image is None:
        raise SystemExit("the default image is not built: run `lab images build`")
    return image.path


def bad_kernel(ctx: Context) -> list[str]:
    return ["--kernel", str(_truncated(_image() / "vmlinuz", ctx.work / "vmlinuz-truncated"))]


def bad_initrd(ctx: Context) -> list[str]:
    return ["--initrd", str(_truncated(_image() / "initramfs.cpio", ctx.work / "initramfs-truncated.cpio"))]


def small_swap(ctx: Context) -> list[str]:
    """An 8 MiB swap area, made as the guest's init would find one: mkswap'd. The default guest's image is
    ~75 MiB of pages and still ~31 MiB compressed: a 32 MiB area holds it (hibernation passes)."""
    disk = ctx.work / "small-swap.raw"
    with disk.open("wb") as handle:
        handle.truncate(8 << 20)
    subprocess.run(["mkswap", str(disk)], check=True, capture_output=True)
    return ["--disk", str(disk)]


def corrupt_cache(ctx: Context) -> list[str]:
    """A copy of the default image in a cache of its own, its kernel cut in half (the real cache is untouched)."""
    source = _image()
    target = ctx.work / "cache" / "images" / source.name
    target.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", "--sparse=always", str(source), str(target)], check=True)
    _truncated(source / "vmlinuz", target / "vmlinuz")
    return []


def hibernated_disk(ctx: Context) -> Path:
    """A swap disk holding a hibernation image, from a real hibernate-only run (the preparation, not the fault)."""
    run = Run(ctx.work / "prepare", ctx.scenario_file("hibernate-only"), runs=ctx.work / "prepare" / "runs")
    exit_status, _ = run.finish()
    reap(leftovers([run.process.pid], run.runs))
    if run.run_dir is None or not (run.run_dir / "swap.raw").is_file():
        raise RuntimeError(f"the hibernate-only run made no disk (exit {exit_status}): {run.output()[-500:]}")
    disk = ctx.work / "hibernated.raw"
    subprocess.run(["cp", "--sparse=always", str(run.run_dir / "swap.raw"), str(disk)], check=True)
    return disk


def corrupt_image(ctx: Context) -> list[str]:
    """Flip the bytes of every 8th data page of the image (past the header pages), in a copy of the disk."""
    disk = hibernated_disk(ctx)
    page = 4096
    flipped = 0
    with disk.open("r+b") as handle:
        handle.seek(0, os.SEEK_END)
        pages = handle.tell() // page
        for index in range(16, pages):
            handle.seek(index * page)
            data = handle.read(page)
            if not data.strip(b"\0"):
                continue
            if flipped % 8 == 0:
                handle.seek(index * page)
                handle.write(bytes(b ^ 0xFF for b in data))
            flipped += 1
    ctx.work.joinpath("corrupted-pages").write_text(f"{(flipped + 7) // 8} of {flipped} data pages\n")
    return ["--disk", str(disk)]


def data_end(disk: Path, chunk: int = 1 << 20) -> int:
    """The offset just past the last non-zero MiB of a disk: where the hibernation image ends."""
    end = 0
    with disk.open("rb") as handle:
        offset = 0
        while data := handle.read(chunk):
            if data.strip(b"\0"):
                end = offset + len(data)
            offset += len(data)
    return end


def truncated_swap(ctx: Context) -> list[str]:
    """The disk cut in the middle of its image (the header still says S1SUSPEND: the image's tail is gone)."""
    disk = hibernated_disk(ctx)
    end = data_end(disk)
    os.truncate(disk, end // 2 // (1 << 20) * (1 << 20))
    ctx.work.joinpath("truncated-at").write_text(f"{end // 2 >> 20} MiB of an image ending at {end >> 20} MiB\n")
    return ["--disk", str(disk)]


def full_fs(ctx: Context) -> Path:
    mount = ctx.work / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "lab-faults", str(mount)], check=True)
    return mount / "runs"


def unmount(ctx: Context) -> None:
    mount = ctx.work / "full"
    if os.path.ismount(mount):
        if ctx.keep:
            subprocess.run(["cp", "-a", str(mount / "runs"), str(ctx.work / "full-runs")], check=False)
        subprocess.run(["umount", str(mount)], check=False)


def lab_sigkill(ctx: Context) -> Row:
    """SIGKILL to the lab 3s into boot1: QEMU must die with it (PR_SET_PDEATHSIG)."""
    row = Row("lab-sigkill")
    run = Run(ctx.work, "hibernate-resume")
    if not run.wait_for(started("qemu-launched", boot="boot1")):
        row.notes.append("boot1 never launched: the fault was not injected")
    else:
        time.sleep(3)
        assert run.run_dir is not None
        pids = qemu_pids(run.run_dir)
        os.kill(run.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        run.process.wait()
        while any(os.path.exists(f"/proc/{pid}") and _read(f"/proc/{pid}/stat").split(b") ")[-1][:1] != b"Z"
                  for pid in pids) and time.monotonic() - killed < 10:
            time.sleep(0.02)
        gone = [pid for pid in pids if not os.path.exists(f"/proc/{pid}")
                or _read(f"/proc/{pid}/stat").split(b") ")[-1][:1] == b"Z"]
        row.notes.append(f"QEMU {pids}: {len(gone)} of {len(pids)} gone "
                         f"{time.monotonic() - killed:.2f}s after the lab's SIGKILL")
    exit_status, wall = run.finish()
    judge(row, run, exit_status, wall)
    sweep(row, [run.process.pid], run.runs)
    return row


def lab_sigint(ctx: Context) -> Row:
    """SIGINT (Ctrl-C) to the lab during the hibernate step: it must stop QEMU and still write its files."""
    row = Row("lab-sigint")
    run = Run(ctx.work, "hibernate-resume")
    fault_wall = None
    if run.wait_for(started("step-start", step="hibernate")):
        time.sleep(2)
        os.kill(run.process.pid, signal.SIGINT)
        fault_wall = time.time()
    exit_status, wall = run.finish()
    judge(row, run, exit_status, wall, fault_wall=fault_wall)
    sweep(row, [run.process.pid], run.runs)
    return row


def same_disk(ctx: Context) -> Row:
    """Two runs started together with the same --disk (a blank mkswap'd file): each must get its own copy."""
    row = Row("same-disk")
    disk = ctx.work / "shared-swap.raw"
    with disk.open("wb") as handle:
        handle.truncate(512 << 20)
    subprocess.run(["mkswap", str(disk)], check=True, capture_output=True)
    before = disk.read_bytes()[:8192]
    first = Run(ctx.work / "a", "hibernate-resume", "--disk", str(disk))
    second = Run(ctx.work / "b", "hibernate-resume", "--disk", str(disk))
    (exit_a, wall_a), (exit_b, wall_b) = first.finish(), second.finish()
    judge(row, first, exit_a, wall_a, fault_wall=first.spawned_wall)
    other = judge(Row("same-disk/b"), second, exit_b, wall_b, fault_wall=second.spawned_wall)
    row.exit = exit_a if exit_a != 0 else exit_b
    row.classes = f"{row.classes} | {other.classes}"
    row.reason = f"a: {row.status} {row.reason} | b: {other.status} {other.reason}"
    row.artifacts = f"{row.artifacts}|{other.artifacts}"
    row.notes.append(f"the shared disk {'is unchanged' if disk.read_bytes()[:8192] == before else 'WAS WRITTEN'}")
    sweep(row, [first.process.pid, second.process.pid], ctx.work)
    return row


PORT_COLLISION = """
import socket, sys
import lab.scenario.guest as guest
held = socket.socket(); held.bind(("127.0.0.1", 0)); held.listen(1)
port = held.getsockname()[1]
real = guest.free_local_port
calls = []
def colliding():
    calls.append(1)
    return port if len(calls) == 1 else real()
guest.free_local_port = colliding
print(f"faults: the first SSH forward port ({port}) is held by the lab's own process", flush=True)
from lab.cli import main
sys.argv[0] = "lab"
sys.exit(main())
"""


def port_collision(ctx: Context) -> Row:
    """boot1's SSH forward is given a port that is already listening: QEMU fails to start, the lab retries."""
    row = Row("port-collision")
    run = Run(ctx.work, "hibernate-resume", python=[PYTHON, "-c", PORT_COLLISION])
    exit_status, wall = run.finish()
    judge(row, run, exit_status, wall, fault_wall=run.spawned_wall)
    taken = [r for r in run.events() if r.get("kind") == "port-taken"]
    row.notes.append(f"{len(taken)} port-taken record(s) in events.jsonl")
    sweep(row, [run.process.pid], run.runs)
    return row


CASES: dict[str, tuple[str, Callable[[Context], Row]]] = {
    **{f"{sig.name.lower()}-{phase}": (f"{sig.name} to QEMU during {phase}", qemu_signal(phase, sig))
       for sig in (signal.SIGKILL, signal.SIGSTOP) for phase in ("boot", "hibernate", "resume")},
    "guest-panic": ("the guest panics (sysrq c) in a `run` step",
                    scenario_case("guest-panic", "guest-panic", "run")),
    "guest-freeze": ("the guest suspends to idle with nothing to wake it (`echo freeze > /sys/power/state`)",
                     scenario_case("guest-freeze", "guest-freeze", "run")),
    "guest-stuck-command": ("a `run` command that never returns (a busy loop in the guest's shell)",
                            scenario_case("guest-stuck-command", "guest-stuck-command", "run")),
    "oops-resume": (f"a kernel Oops while resuming ({OOPS_KERNEL})",
                    scenario_case("oops-resume", "hibernate-resume", "boot", "--kernel-deb", OOPS_KERNEL)),
    "small-swap": ("an 8 MiB swap disk (--disk) for a ~31 MiB compressed image",
                   scenario_case("small-swap", "hibernate-resume", "hibernate", setup=small_swap)),
    "corrupt-image": ("every 8th page of a hibernation image inverted on disk, then resumed (--disk)",
                      scenario_case("corrupt-image", "resume-only", setup=corrupt_image)),
    "truncated-swap": ("a disk holding a hibernation image cut in the middle of the image, then resumed (--disk)",
                       scenario_case("truncated-swap", "resume-only", setup=truncated_swap)),
    "full-fs": ("the runs directory on a 4 MiB tmpfs",
                scenario_case("full-fs", "hibernate-resume", runs=full_fs, teardown=unmount)),
    "missing-kernel": ("--kernel names no file",
                       scenario_case("missing-kernel", "hibernate-resume", None, "--kernel", "/nonexistent/vmlinuz")),
    "truncated-kernel": ("--kernel is the image's kernel cut in half",
                         scenario_case("truncated-kernel", "hibernate-resume", setup=bad_kernel)),
    "truncated-initrd": ("--initrd is the image's initramfs cut in half",
                         scenario_case("truncated-initrd", "hibernate-resume", setup=bad_initrd)),
    "corrupt-cache": ("the cached image's kernel cut in half (a copy in a LAB_CACHE_DIR of its own)",
                      scenario_case("corrupt-cache", "hibernate-resume", setup=corrupt_cache,
                                    env=lambda ctx: {"LAB_CACHE_DIR": str(ctx.work / "cache")})),
    "lab-sigkill": ("SIGKILL to the lab during boot1: QEMU must die with it", lab_sigkill),
    "lab-sigint": ("SIGINT to the lab during hibernate: QEMU stopped, files written", lab_sigint),
    "same-disk": ("two runs at once with the same --disk (boots two guests)", same_disk),
    "port-collision": ("boot1's SSH forward port already taken", port_collision),
}


def short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[Row]) -> None:
    print(f"{'case':<20} {'exit':>4} {'verdict':<7} {'class':<14} {'reason':<58} {'fault→verdict':>13} "
          f"{'files':<7} leftovers")
    for row in rows:
        seconds = f"{row.fault_to_verdict:.2f}s" if row.fault_to_verdict is not None else "-"
        exit_status = "-" if row.exit is None else str(row.exit)
        print(f"{row.case:<20} {exit_status:>4} {row.status:<7} {short(row.classes, 14):<14} "
              f"{short(row.reason, 58):<58} {seconds:>13} {row.artifacts:<7} {', '.join(row.leftovers) or 'none'}")
    print("files: R result.json, J junit.xml, H report.html (- missing)")
    for row in rows:
        for note in row.notes:
            print(f"  {row.case}: {note}")
        if row.run_dir is not None:
            print(f"  {row.case}: run {row.run_dir}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep each case's work directory")
    parser.add_argument("--work", type=Path, help="where work directories go (default: a temporary directory)")
    args = parser.parse_args()
    if args.list:
        for name, (description, _) in CASES.items():
            print(f"{name:<20} {description}")
        return 0
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)} (see --list)")
    base = args.work or Path(tempfile.mkdtemp(prefix="lab-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    began = time.monotonic()
    for name in names:
        work = base / name
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(work, args.keep)
        _, case = CASES[name]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {CASES[name][0]}", file=sys.stderr, flush=True)
        try:
            row = case(ctx)
        except Exception as error:  # a case that could not be set up is a row too
            row = Row(name, reason=f"case failed: {type(error).__name__}: {error}")
        rows.append(row)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.keep and args.work is None:
        shutil.rmtree(base, ignore_errors=True)
    print()
    table(rows)
    timed = [row.fault_to_verdict for row in rows if row.fault_to_verdict is not None]
    complete = sum(row.artifacts == "RJH" for row in rows)
    leaky = sum(bool(row.leftovers) for row in rows)
    median = f"{statistics.median(timed):.1f}s" if timed else "-"
    print(f"{len(rows)} case(s) in {time.monotonic() - began:.0f}s: {complete} wrote all three files, "
          f"{leaky} left processes running, fault→verdict median {median}"
          + ("" if args.keep else "; work directories removed (--keep keeps them)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
