"""Print what running a matrix on Slurm costs against local workers: the same cells both ways, side by side.

Run: PYTHONPATH=. .venv/bin/python benchmarks/slurm_vs_local.py [--cells N] [--scenario NAME] [--rounds R]
Needs the Slurm packages (./bootstrap) and the default arm64 image. It starts a throwaway Slurm cluster on
this machine (tests/support/slurm_cluster.py) with one tcg node that takes every cell at once, then runs
`lab run --matrix M` and `lab run --matrix M --engine slurm` in turn, so both engines run every cell at once
on the same cores. For each engine: the matrix's wall time and, per cell, when it started after the matrix
did (Slurm: submission and dispatch), its wall time, the run's own seconds (result.json) and the difference:
the cell's overhead (process start, imports, output and results). Figures are printed, not asserted: the
machine is shared, so run a few rounds and read the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lab.paths import REPO_ROOT
from lab.rundir import RunDirectory
from tests.support.slurm_cluster import LocalSlurmCluster, SlurmNodeSpec

PERSONALITIES = ("kvm", "none", "reject-explicit-type", "reject-zero-type", "alpha-spec", "return-to-guest")


def run_once(engine: str, matrix_file: Path, runs: Path, env: dict[str, str]) -> dict[str, Any]:
    """One `lab run` as users start it; its matrix.json, each cell with the run's own seconds added."""
    subprocess.run([sys.executable, "-m", "lab.cli", "run", "--matrix", str(matrix_file), "--engine", engine,
                    "--runs-dir", str(runs)], env=env, stdout=subprocess.DEVNULL, timeout=1800, check=False)
    directory = max(runs.iterdir(), key=lambda path: path.stat().st_mtime)
    summary = json.loads((directory / "matrix.json").read_text())
    for cell in summary["cells"]:
        own = RunDirectory(Path(cell["run_dir"])).read_result() if cell["run_dir"] else None
        cell["run_seconds"] = own["seconds"] if own else None
    return summary


def show(engine: str, summary: dict[str, Any]) -> tuple[float, list[float]]:
    """Print one engine's figures; return the matrix's overhead (its wall time beyond its longest run's own
    seconds, which the machine's load moves far less than the wall time) and each cell's overhead."""
    overheads = []
    longest = max((cell["run_seconds"] or 0.0) for cell in summary["cells"])
    print(f"  {engine:<6} matrix wall {summary['seconds']:6.1f}s, {summary['seconds'] - longest:4.1f}s beyond its "
          f"longest run  ({summary['counts']})")
    for cell in summary["cells"]:
        run = cell["run_seconds"]
        overhead = cell["seconds"] - run if run is not None else float("nan")
        overheads.append(overhead)
        print(f"    {cell['id']:<58} on {cell['host']:<12} start +{cell['start'] or 0:5.1f}s  "
              f"cell {cell['seconds']:5.1f}s  run {run or 0:5.1f}s  overhead {overhead:4.1f}s")
    return summary["seconds"] - longest, overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2, help="cells, one per PSCI personality (default 2)")
    parser.add_argument("--scenario", default="poweroff-baseline")
    parser.add_argument("--rounds", type=int, default=1, help="local then Slurm, this many times")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"local": [], "slurm": []}
    beyond: dict[str, list[float]] = {"local": [], "slurm": []}
    overheads: dict[str, list[float]] = {"local": [], "slurm": []}
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as scratch:
        matrix_file = Path(scratch) / "bench.yaml"
        matrix_file.write_text(f"kernels: [default]\nscenarios: [{args.scenario}]\naccelerators: [tcg]\n"
                               f"personalities: [{', '.join(PERSONALITIES[:args.cells])}]\nworkers: {args.cells}\n")
        node = SlurmNodeSpec("tcg1", ("tcg",), "tcg", cpus=2 * args.cells, real_memory_mb=2048 * args.cells)
        with LocalSlurmCluster((node,)) as cluster:
            env = {**cluster.env, "LAB_CONFIG": "/nonexistent/config.yaml",
                   "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))}
            print(f"{args.cells} cells of {args.scenario} on TCG, {args.cells} at a time, {os.cpu_count()} CPUs")
            for round_number in range(1, args.rounds + 1):
                print(f"round {round_number}")
                for engine in walls:
                    summary = run_once(engine, matrix_file, Path(scratch) / engine, env)
                    matrix_overhead, cell_overheads = show(engine, summary)
                    walls[engine].append(summary["seconds"])
                    beyond[engine].append(matrix_overhead)
                    overheads[engine].extend(cell_overheads)
    print("summary (median)")
    for name in walls:
        print(f"  {name:<6} matrix wall {statistics.median(walls[name]):6.1f}s, "
              f"{statistics.median(beyond[name]):4.1f}s beyond its longest run  "
              f"overhead per cell {statistics.median(overheads[name]):4.1f}s")
    print("  Slurm's cell times start at its StartTime (whole seconds): submission and dispatch show in `start` "
          "and in the matrix's time beyond its longest run")


if __name__ == "__main__":
    main()
