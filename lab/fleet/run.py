"""`lab run --matrix`: prepare a matrix's images, run its cells through an engine, show and write the results.

Images are prepared once, before any cell starts, so that cells never race to build the same
image; an engine gets each cell with its image settled. Results are written and the summary shown
also when the matrix is interrupted.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from lab.fleet.engine import CellOutcome, CellRun, Engine
from lab.fleet.live import finished_line, live_table, print_summary
from lab.fleet.local import LocalEngine
from lab.fleet.matrix import Cell, Matrix, image_name
from lab.fleet.results import MatrixResult, write_results
from lab.image.guest_image import GuestImage
from lab.image.store import find_image
from lab.rundir import timestamp, unique_dir
from lab.scenario.run import RunOptions


def _prepare_images(cells: list[Cell], arch: str, console: Console) -> dict[tuple[str, str], GuestImage]:
    """Every image the cells boot, by recipe and kernel, each found (or built) once."""
    images: dict[tuple[str, str], GuestImage] = {}
    for cell in cells:
        key = (image_name(cell.scenario, arch), cell.kernel)
        if key not in images:
            console.print(escape(f"image {key[0]} with kernel {key[1]}"))
            images[key] = find_image(*key, log=lambda line: console.print(escape(f"  {line}")))
    return images


def run_matrix(matrix: Matrix, runs_root: Path, workers: int, console: Console,
               engine: Engine | None = None) -> MatrixResult:
    """Prepare the images, run every cell (on this machine unless `engine` says otherwise), write matrix.json,
    junit.xml and report.html; re-raises an interrupt."""
    cells = matrix.cells()
    images = _prepare_images(cells, matrix.arch, console)
    result = MatrixResult(unique_dir(runs_root, f"{matrix.name}-{timestamp()}"))
    runs = []
    for cell in cells:
        run_dir = result.directory / cell.dir_name
        image = images[(image_name(cell.scenario, matrix.arch), cell.kernel)]
        runs.append(CellRun(CellOutcome(cell, run_dir), RunOptions(arch=matrix.arch, image=str(image.path),
                                                                   accel=cell.accel, psci=cell.psci, qemu=cell.qemu,
                                                                   run_dir=run_dir)))
    result.outcomes = [run.outcome for run in runs]
    workers = min(workers, len(cells))
    console.print(f"[bold]{matrix.name}[/]: {len(cells)} cells, {workers} at a time, in "
                  f"{escape(str(result.directory))}")
    started, clock = datetime.now(UTC), time.monotonic()
    try:
        with live_table(console, result.outcomes):
            (engine or LocalEngine()).run(runs, workers, lambda outcome: console.print(finished_line(outcome)))
    finally:
        write_results(result, matrix, workers, started, clock)
        print_summary(console, matrix.name, result, time.monotonic() - clock)
    return result
