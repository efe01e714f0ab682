"""The results store at nightly-lab scale: importing 10,000 runs, and `lab compare` and `lab dashboard` on a
history of 100 nights x 50 cells. Generated run directories (tests/support/results_history.py: the recorded
run's result.json with its verdict, class, kernel and times varied), since 10,000 real runs take two days.

Run: .venv/bin/python benchmarks/results_store.py [--db URL] [--keep DIR]
Each step runs as its own `lab` process; prints one JSON object: per step, wall seconds, the process's peak
RSS (MiB) and its exit status. --db: a PostgreSQL URL to use instead of a SQLite file beside the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.results_history import Cell, write_night  # noqa: E402

CELLS = 50
IMPORT_NIGHTS = 200
HISTORY_NIGHTS = 100


def _cells(night: int, rng: random.Random) -> list[Cell]:
    """Fifty cells; a few fail, some are flaky, one regresses on the last nights with a kernel update."""
    cells = []
    for index in range(CELLS):
        cell_id = f"scenario-{index % 10}[kernel=k{index // 10},psci=kvm]"
        times = {"hibernate_seconds": 18 + rng.random() * 4, "resume_seconds": 30 + rng.random() * 6}
        if index == 7 and night >= HISTORY_NIGHTS - 2:
            cells.append(Cell(cell_id, "FAIL", "hibernate-off", kernel="7.2.14-1", **times))
        elif rng.random() < 0.02:
            cells.append(Cell(cell_id, "FAIL", "hang", **times))
        else:
            cells.append(Cell(cell_id, flaky=rng.random() < 0.03, **times))
    return cells


def _step(argv: list[str], env: dict[str, str]) -> dict[str, float | int]:
    """One `lab` command in a process of its own: its wall time and peak RSS."""
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "lab.cli", *argv], stdout=subprocess.DEVNULL,
                             env=env | {"PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": round(time.monotonic() - started, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "exit": os.waitstatus_to_exitcode(status)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a PostgreSQL URL (default: SQLite beside the runs)")
    parser.add_argument("--keep", type=Path, help="generate into this directory and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="lab-results-bench-"))
    env = dict(os.environ)
    rng = random.Random(19)
    try:
        runs = work / "runs"
        started = time.monotonic()
        nights = [write_night(runs, "nightly", night, _cells(night, rng)) for night in range(IMPORT_NIGHTS)]
        generated = round(time.monotonic() - started, 1)
        database = ["--db", args.db] if args.db else ["--db", f"sqlite:///{work / 'all.sqlite'}"]
        history = ["--db", args.db] if args.db else ["--runs-dir", str(runs)]
        report = {"generated_runs": sum(len(list(n.glob("cell*"))) for n in nights), "generate_seconds": generated,
                  "import_10000": _step(["results", "import", str(runs), *database], env)}
        if args.db:
            report["note"] = "the history steps share the --db store with the 10,000-run import"
        else:
            report["import_history"] = _step(["results", "import", *map(str, nights[:HISTORY_NIGHTS]),
                                              "--runs-dir", str(runs)], env)
        report["compare_last_two"] = _step(["compare", str(nights[HISTORY_NIGHTS - 2].name),
                                            str(nights[HISTORY_NIGHTS - 1].name), *history], env)
        report["dashboard_100_nights"] = _step(["dashboard", "--nights", str(HISTORY_NIGHTS), "--out",
                                                str(work / "dashboard.html"), *history], env)
        report["dashboard_bytes"] = (work / "dashboard.html").stat().st_size
        print(json.dumps(report, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
