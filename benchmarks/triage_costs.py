"""What the kernel's PM debugging costs, and how long the pm_test ladder takes.

Run: .venv/bin/python benchmarks/triage_costs.py [--rounds N] [--kernel-deb linux-image-arm64=7.2.13-1]
     [--skip-ladder] [--runs-dir DIR]

1. `hibernate-resume` with the lab's PM debugging on (`pm_debug: true`, the default: `pm_debug_messages
   loglevel=8` on the command line, `pm_print_times` before hibernating) and off (`pm_debug: false`), in
   interleaved rounds, side by side: the fresh boot, the hibernate step, the resume boot (the lab's
   steps, wall seconds) and the kernel's own image write and read (its seconds) and console lines.
   On Debian's cloud kernel (the default image) the debug switches do not exist: there the cost should be
   nil, and the generic kernel (`--kernel-deb linux-image-arm64=…`) is the one that prints device phases.
2. The ladder: a run held to a power-off at pm_test `devices` fails on purpose on the generic kernel, then
   `lab triage` walks the five levels and test_resume; its wall time, and each of its two runs'.

Each run is a real `python -m lab.cli …`, one at a time. Figures are printed, never asserted.
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
from pathlib import Path

import yaml

from lab.paths import REPO_ROOT, SCENARIOS_DIR

TIMEOUT = 1200.0
GENERIC = "linux-image-arm64=7.2.13-1"
FAILING = REPO_ROOT / "tests" / "scenario" / "data" / "pm-test-devices.yaml"


def _lab(*args: str) -> tuple[int | None, str, float]:
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "lab.cli", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                              stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout + done.stderr, time.monotonic() - started
    except subprocess.TimeoutExpired:
        return None, f"no exit within {TIMEOUT:.0f}s", time.monotonic() - started


def _variant(folder: Path, pm_debug: bool) -> Path:
    data = yaml.safe_load((SCENARIOS_DIR / "hibernate-resume.yaml").read_text())
    data |= {"name": f"hibernate-resume-debug-{'on' if pm_debug else 'off'}", "pm_debug": pm_debug}
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _newest(runs: Path) -> Path | None:
    found = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    return found[-1] if found else None


def _figures(run: Path) -> dict[str, float]:
    result = json.loads((run / "result.json").read_text())
    steps = [p for p in result["phases"] if p.get("seconds") is not None]
    figures = {"wall": result["seconds"]}
    for key, index in (("boot fresh", 0), ("hibernate", 2), ("boot resumed", 3)):
        if index < len(steps):
            figures[key] = steps[index]["seconds"]
    for boot in result["observations"]["kernel_phases"]["boots"].values():
        for phase in boot["phases"]:
            if phase["kind"] in ("image-write", "image-read") and phase["seconds"] is not None:
                figures[f"kernel {phase['name']}"] = phase["seconds"]
    for name in ("boot1", "boot2"):
        console = run / f"console-{name}.log"
        figures[f"{name} console lines"] = len(console.read_text(errors="replace").splitlines())
    return figures


def debug_cost(rounds: int, runs: Path, kernel: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        variants = {on: _variant(Path(folder), on) for on in (True, False)}
        seen: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for number in range(rounds):
            for on in (True, False) if number % 2 == 0 else (False, True):
                where = runs / f"debug-{'on' if on else 'off'}"
                status, output, _ = _lab("scenario", str(variants[on]), "--runs-dir", str(where), *kernel)
                run = _newest(where)
                if status != 0 or run is None:
                    print(f"  round {number + 1} debug {'on' if on else 'off'}: exit {status}: {output.strip()[-200:]}")
                    continue
                seen[on].append(_figures(run))
    keys = sorted({key for figures in seen[True] + seen[False] for key in figures})
    print(f"PM debugging cost ({' '.join(kernel) or 'default image'}), median over "
          f"{len(seen[True])} on / {len(seen[False])} off runs:")
    print(f"  {'figure':<28}{'debug on':>12}{'debug off':>12}")
    for key in keys:
        cells = []
        for on in (True, False):
            values = [figures[key] for figures in seen[on] if key in figures]
            cells.append(f"{statistics.median(values):12.2f}" if values else f"{'-':>12}")
        print(f"  {key:<28}{''.join(cells)}")


def ladder_time(runs: Path) -> None:
    where = runs / "ladder"
    status, output, seconds = _lab("scenario", str(FAILING), "--kernel-deb", GENERIC, "--runs-dir", str(where))
    run = _newest(where)
    if status != 1 or run is None:
        print(f"ladder: the failing run did not fail as planned (exit {status}): {output.strip()[-200:]}")
        return
    catalogue = REPO_ROOT / "tests" / "scenario" / "data" / "expect-devices-catalogue.yaml"
    status, output, seconds = _lab("triage", str(run), "--catalogue", str(catalogue))
    triage = json.loads((run / "triage.json").read_text()) if (run / "triage.json").exists() else None
    if status != 0 or triage is None:
        print(f"ladder: lab triage exit {status}: {output.strip()[-300:]}")
        return
    parts = {name: json.loads((Path(path) / "result.json").read_text())["seconds"]
             for name, path in triage["runs"].items()}
    print(f"ladder on {GENERIC}: `lab triage` {seconds:.1f}s wall ({triage['seconds']:.1f}s in triage): "
          + ", ".join(f"{name} run {value:.1f}s" for name, value in parts.items()))
    print(f"  pm_test ladder: {triage['summary']}; test_resume: {triage['test_resume']['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kernel-deb", help="a kernel for the cost comparison (default: the default image's)")
    parser.add_argument("--skip-ladder", action="store_true")
    parser.add_argument("--runs-dir", type=Path, default=None)
    args = parser.parse_args()
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="lab-triage-costs-"))
    debug_cost(args.rounds, runs, ["--kernel-deb", args.kernel_deb] if args.kernel_deb else [])
    if not args.skip_ladder:
        ladder_time(runs)
    print(f"run directories: {runs}")


if __name__ == "__main__":
    main()
