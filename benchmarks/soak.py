"""Soak: `hibernate-resume` and `hibernate-coldboot-altered-signature` N times each, taking turns, then the
failures (with their reason and run directory) and the spread of every phase and of the wall time.

Run: .venv/bin/python benchmarks/soak.py --runs N [--runs-dir DIR]

Each run is a real `python -m lab.cli scenario NAME --runs-dir DIR`, one at a time. A phase is a step of
the scenario, named by its label and position (`2:mark`); its duration is the `seconds` of its step-end
record in events.jsonl. Figures are printed, never asserted: a flaky run is reported, not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.paths import REPO_ROOT

SCENARIOS = ("hibernate-resume", "hibernate-coldboot-altered-signature")
TIMEOUT = 900.0


@dataclass
class Outcome:
    scenario: str
    exit: int | None
    wall: float
    status: str = "?"
    reason: str = ""
    run_dir: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)


def run_once(scenario: str, runs: Path) -> Outcome:
    before = set(runs.iterdir()) if runs.is_dir() else set()
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "lab.cli", "scenario", scenario, "--runs-dir", str(runs)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdin=subprocess.DEVNULL)
        exit_status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:  # subprocess.run has killed the lab (QEMU dies with it)
        exit_status, output = None, f"no exit within {TIMEOUT:.0f}s: {expired.stdout or ''}"
    outcome = Outcome(scenario, exit_status, time.monotonic() - started)
    new = sorted(set(runs.iterdir()) - before) if runs.is_dir() else []
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


def spread(values: list[float]) -> str:
    return f"{min(values):7.2f} {statistics.median(values):7.2f} {max(values):7.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario (default 3)")
    parser.add_argument("--runs-dir", type=Path, help="where run directories go (default: a temporary directory)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="lab-soak-"))
    outcomes: list[Outcome] = []
    began = time.monotonic()
    for round_number in range(1, args.runs + 1):
        for scenario in SCENARIOS:
            outcome = run_once(scenario, runs)
            outcomes.append(outcome)
            print(f"[{time.strftime('%H:%M:%S')}] {round_number}/{args.runs} {scenario}: {outcome.status} "
                  f"in {outcome.wall:.1f}s (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    print(f"\n{len(outcomes)} runs in {time.monotonic() - began:.0f}s, run directories in {runs}")
    failures = [o for o in outcomes if o.status != "PASS"]
    print(f"\nfailures: {len(failures)} of {len(outcomes)}")
    for outcome in failures:
        print(f"  {outcome.scenario}: exit {outcome.exit}, {outcome.status}: {outcome.reason}\n    {outcome.run_dir}")
    for scenario in SCENARIOS:
        mine = [o for o in outcomes if o.scenario == scenario]
        print(f"\n{scenario} ({len(mine)} runs, {sum(o.status == 'PASS' for o in mine)} passed)")
        print(f"  {'phase':<20} {'n':>3} {'min':>7} {'median':>7} {'max':>7}  (seconds)")
        names = list(dict.fromkeys(name for o in mine for name in o.phases))
        for name in names:
            values = [o.phases[name] for o in mine if name in o.phases]
            print(f"  {name:<20} {len(values):>3} {spread(values)}")
        print(f"  {'wall':<20} {len(mine):>3} {spread([o.wall for o in mine])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
