"""Soak: `hibernate-resume` and `hibernate-coldboot-altered-signature` N times each, taking turns, then the
failures (with their reason and run directory) and the spread of every phase and of the wall time.

Run: .venv/bin/python benchmarks/soak.py --runs N [--runs-dir DIR] [--load] [--host]
From a clone nothing else edits (`PYTHONPATH=CLONE python CLONE/benchmarks/soak.py …`): every run reads the
lab's code and data from that tree as it starts, so an edit in the middle of a soak fails the run it meets.

Each run is a real `python -m lab.cli scenario NAME --runs-dir DIR`, one at a time. A phase is a step of
the scenario, named by its label and position (`2:mark`); its duration is the `seconds` of its step-end
record in events.jsonl. Figures are printed, never asserted: a flaky run is reported, not raised.

--load: a matrix (LOAD_MATRIX, two workers) runs over and over beside the soak, so both cores stay busy;
its rounds and failures are printed too. --host: `lab host start kvm-host` boots the emulated arm64 KVM host
(built first if need be) and every run goes there with `--accel kvm`; the host is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.paths import REPO_ROOT

SCENARIOS = ("hibernate-resume", "hibernate-coldboot-altered-signature")
TIMEOUT = 900.0
HOST_TIMEOUT = 1800.0
"""A run on the emulated KVM host takes about three minutes on an idle machine; under load, many more."""
HOST_READY_SECONDS = 3600.0
"""`lab host start` builds the host image first when it is missing (the arm64 QEMU alone: 5 to 35 minutes)."""
STOP_SECONDS = 120.0
LAB = [sys.executable, "-m", "lab.cli"]
LOAD_MATRIX = """\
name: soak-load
arch: arm64
kernels: [default]
scenarios: [poweroff-baseline, hibernate-resume, psci-none, hibernate-coldboot-altered-signature]
accelerators: [tcg]
workers: 2
"""
"""Each scenario with its own PSCI personality, so every cell is expected to pass: a failed cell is news."""
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


@dataclass
class Outcome:
    scenario: str
    exit: int | None
    wall: float
    status: str = "?"
    reason: str = ""
    run_dir: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)


def _stop(process: subprocess.Popen[str], first: signal.Signals) -> None:
    """`first` (the lab's Ctrl-C or SIGTERM, so it cleans up), then SIGKILL if it does not end in time."""
    if process.poll() is None:
        process.send_signal(first)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)


class Load:
    """LOAD_MATRIX run again and again in the background until stopped: its two workers keep both cores busy."""

    def __init__(self, work: Path) -> None:
        self.matrix = work / "load.yaml"
        self.matrix.write_text(LOAD_MATRIX)
        self.runs = work / "load-runs"
        self.exits: list[int] = []
        self._stopping = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._process = subprocess.Popen([*LAB, "run", "--matrix", str(self.matrix), "--runs-dir", str(self.runs)],
                                             cwd=REPO_ROOT, env=ENV, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
            code = self._process.wait()
            if not self._stopping.is_set():
                self.exits.append(code)

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        if self._process is not None:
            _stop(self._process, signal.SIGINT)
        self._thread.join(STOP_SECONDS)

    def summary(self) -> str:
        failed = sum(code != 0 for code in self.exits)
        return (f"load: {len(self.exits)} matrices of 4 cells finished beside the soak, {failed} with a failed "
                f"cell; their runs are in {self.runs}")


class KvmHost:
    """The emulated arm64 KVM host, started with `lab host start` and stopped with SIGTERM at the end."""

    def __init__(self) -> None:
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> KvmHost:
        self._process = subprocess.Popen([*LAB, "host", "start", "kvm-host"], cwd=REPO_ROOT, env=ENV, text=True,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self._process.stdout is not None
        deadline = time.monotonic() + HOST_READY_SECONDS
        while time.monotonic() < deadline and self._process.poll() is None:
            ready, _, _ = select.select([self._process.stdout], [], [], 5)
            line = self._process.stdout.readline() if ready else ""
            if line:
                print(f"  host: {line.rstrip()}", file=sys.stderr, flush=True)
            if match := re.search(r"ready: (ssh://\S+)", line):
                self.url = match.group(1)
                threading.Thread(target=self._process.stdout.read, daemon=True).start()
                return self
        self.__exit__()
        raise SystemExit(f"soak: the kvm-host did not become ready within {HOST_READY_SECONDS:.0f}s")

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            _stop(self._process, signal.SIGTERM)


def _run_dirs(runs: Path) -> set[Path]:
    """The run directories only: the lab also indexes its runs into results.sqlite beside them."""
    return {path for path in runs.iterdir() if path.is_dir()} if runs.is_dir() else set()


def run_once(scenario: str, runs: Path, host: str | None = None) -> Outcome:
    before = _run_dirs(runs)
    started = time.monotonic()
    where = ["--host", host, "--accel", "kvm"] if host else []
    timeout = HOST_TIMEOUT if host else TIMEOUT
    try:
        done = subprocess.run([*LAB, "scenario", scenario, "--runs-dir", str(runs), *where],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              env=ENV, stdin=subprocess.DEVNULL)
        exit_status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:  # subprocess.run has killed the lab (QEMU dies with it)
        seen = expired.stdout or b""  # bytes even under text=True: TimeoutExpired keeps what was read raw
        text = seen.decode(errors="replace") if isinstance(seen, bytes) else seen
        exit_status, output = None, f"no exit within {timeout:.0f}s: {text}"
    outcome = Outcome(scenario, exit_status, time.monotonic() - started)
    new = sorted(_run_dirs(runs) - before)
    outcome.run_dir = new[-1] if new else None
    lines = output.strip().splitlines()
    outcome.reason = lines[-1] if lines else ""
    if outcome.run_dir is None:
        return outcome
    try:
        verdict = json.loads((outcome.run_dir / "result.json").read_text())["verdict"]
        outcome.status, outcome.reason = verdict["status"], verdict["reason"]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        outcome.reason = f"no readable result.json ({error}); the lab said: {outcome.reason}"
    events = outcome.run_dir / "events.jsonl"
    steps = 0
    for line in (events.read_text(errors="replace").splitlines() if events.is_file() else []):
        record = json.loads(line)
        if record.get("kind") == "step-end":
            steps += 1
            outcome.phases[f"{steps}:{record['label'].split(' ')[0]}"] = float(record["seconds"])
    return outcome


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the soak like Ctrl-C: the run under way is stopped and the finished ones are reported."""
    raise KeyboardInterrupt


def spread(values: list[float]) -> str:
    return f"{min(values):7.2f} {statistics.median(values):7.2f} {max(values):7.2f}"


def report(outcomes: list[Outcome], seconds: float, runs: Path) -> None:
    print(f"\n{len(outcomes)} runs in {seconds:.0f}s, run directories in {runs}")
    failures = [o for o in outcomes if o.status != "PASS"]
    print(f"\nfailures: {len(failures)} of {len(outcomes)}")
    for outcome in failures:
        print(f"  {outcome.scenario}: exit {outcome.exit}, {outcome.status}: {outcome.reason}\n    {outcome.run_dir}")
    for scenario in SCENARIOS:
        mine = [o for o in outcomes if o.scenario == scenario]
        if not mine:
            continue
        print(f"\n{scenario} ({len(mine)} runs, {sum(o.status == 'PASS' for o in mine)} passed)")
        print(f"  {'phase':<20} {'n':>3} {'min':>7} {'median':>7} {'max':>7}  (seconds)")
        names = list(dict.fromkeys(name for o in mine for name in o.phases))
        for name in names:
            values = [o.phases[name] for o in mine if name in o.phases]
            print(f"  {name:<20} {len(values):>3} {spread(values)}")
        print(f"  {'wall':<20} {len(mine):>3} {spread([o.wall for o in mine])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario (default 3)")
    parser.add_argument("--runs-dir", type=Path, help="where run directories go (default: a temporary directory)")
    parser.add_argument("--load", action="store_true", help="keep both cores busy with a matrix beside the soak")
    parser.add_argument("--host", action="store_true", help="run on the emulated arm64 KVM host with --accel kvm")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="lab-soak-"))
    runs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lab-soak-work-"))
    mode = " and ".join(name for name, on in (("under load", args.load), ("on the kvm-host", args.host)) if on)
    print(f"soak: {args.runs} rounds {mode or 'idle'}", file=sys.stderr, flush=True)
    outcomes: list[Outcome] = []
    began = time.monotonic()
    load: Load | None = None
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            host = stack.enter_context(KvmHost()).url if args.host else None
            load = stack.enter_context(Load(work)) if args.load else None
            for round_number in range(1, args.runs + 1):
                for scenario in SCENARIOS:
                    outcome = run_once(scenario, runs, host)
                    outcomes.append(outcome)
                    print(f"[{time.strftime('%H:%M:%S')}] {round_number}/{args.runs} {scenario}: {outcome.status} "
                          f"in {outcome.wall:.1f}s (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"\nsoak: stopped after {len(outcomes)} finished runs; the figures below are theirs", flush=True)
    report(outcomes, time.monotonic() - began, runs)
    if load is not None:
        print(f"\n{load.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
