"""The system guest next to the busybox guest: image builds, and boot / hibernate / resume side by side.

Run: .venv/bin/python benchmarks/system_guest.py [--rounds N] [--cold]

- The system image build warm (the cached image found again), and with `--cold` from nothing: a cache
  of its own under a temporary directory (apt lists, mmdebstrap, the disk), which takes minutes.
- In each round, `hibernate-resume` (busybox), `system-hibernate-resume` and the same system scenario with
  `hibernation.compressor: lz4`, in turn: each step's wall time, and the kernel's own figures for the
  image it wrote (`PM: hibernation: Wrote N kbytes in S seconds (R MB/s)`).

Figures are printed, not asserted. The machine may be shared: the load average is printed with each
round, and the contenders take turns so that a busy minute falls on all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lab.paths import REPO_ROOT, SCENARIOS_DIR

LAB = [sys.executable, "-m", "lab.cli"]
WROTE = re.compile(r"PM: hibernation: Wrote (\d+) kbytes in ([\d.]+) seconds \(([\d.]+) MB/s\)")
STEPS = ("boot", "mark", "hibernate", "boot#2", "check")


def _timed(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return time.monotonic() - started


def _build_times(cold: bool) -> None:
    warm = _timed([*LAB, "images", "build", "debian-arm64-system"])
    print(f"system image build, warm (cached): {warm:6.1f} s")
    if not cold:
        return
    with tempfile.TemporaryDirectory(prefix="lab-cold-cache-") as cache:
        seconds = _timed([*LAB, "images", "build", "debian-arm64-system"], env=os.environ | {"LAB_CACHE_DIR": cache})
    print(f"system image build, cold (empty cache): {seconds:6.1f} s")


def _lz4_copy(directory: Path) -> Path:
    data = yaml.safe_load((SCENARIOS_DIR / "system-hibernate-resume.yaml").read_text())
    data["name"] = "system-hibernate-resume-lz4"
    data["hibernation"]["compressor"] = "lz4"
    path = directory / "system-hibernate-resume-lz4.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(scenario: str, runs: Path) -> dict[str, float]:
    runs_dir = runs / str(time.monotonic_ns())
    started = time.monotonic()
    subprocess.run([*LAB, "scenario", scenario, "--runs-dir", str(runs_dir)], capture_output=True, timeout=1800)
    figures = {"total": time.monotonic() - started}
    [run_dir] = [path for path in runs_dir.iterdir() if path.is_dir()]
    result = json.loads((run_dir / "result.json").read_text())
    figures["passed"] = float(result["verdict"]["status"] == "PASS")
    seen: dict[str, int] = {}
    for step in result["phases"]:
        seen[step["step"]] = seen.get(step["step"], 0) + 1
        name = step["step"] if seen[step["step"]] == 1 else f"{step['step']}#{seen[step['step']]}"
        figures[name] = step["seconds"]
    if wrote := WROTE.search((run_dir / "console-boot1.log").read_text(errors="replace")):
        figures["image MB"] = int(wrote.group(1)) / 1024
        figures["write MB/s"] = float(wrote.group(3))
    return figures


def _summary(samples: list[dict[str, float]], name: str) -> str:
    values = [s[name] for s in samples if name in s]
    if not values:
        return f"{'-':>17}"
    return f"{statistics.median(values):7.1f} [{min(values):.1f}-{max(values):.1f}]".rjust(17)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="also build the system image into an empty cache")
    args = parser.parse_args()
    os.chdir(REPO_ROOT)
    _build_times(args.cold)
    with tempfile.TemporaryDirectory(prefix="lab-system-bench-") as scratch:
        runs = Path(scratch)
        contenders = {"busybox": "hibernate-resume", "system": "system-hibernate-resume",
                      "system lz4": str(_lz4_copy(runs))}
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
        for round_number in range(args.rounds):
            order = list(contenders)[round_number % 3:] + list(contenders)[:round_number % 3]
            for name in order:
                samples[name].append(_run(contenders[name], runs))
            print(f"round {round_number + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    columns = ("total", *STEPS, "image MB", "write MB/s")
    print(f"\nmedian [min-max] over {args.rounds} rounds; steps in seconds")
    print(f"{'guest':<11}{'passed':>8}" + "".join(f"{c:>17}" for c in columns))
    for name, taken in samples.items():
        passed = sum(int(s["passed"]) for s in taken)
        print(f"{name:<11}{passed:>5}/{len(taken):<2}" + "".join(_summary(taken, c) for c in columns))


if __name__ == "__main__":
    main()
