"""`lab run --matrix`: prepare a matrix's images, run its cells through an engine, show and write the results.

Images are prepared once, before any cell starts, so that cells never race to build the same
image; an engine gets each cell with its image settled. Results are written and the summary shown
also when the matrix is interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from lab.errors import UsageError
from lab.fleet.engine import CellOutcome, CellRun, CellStatus, Engine
from lab.fleet.host_vm import start_host
from lab.fleet.live import finished_line, live_table, print_summary
from lab.fleet.local import LocalEngine
from lab.fleet.matrix import Cell, HostSpec, Matrix, image_name
from lab.fleet.results import MatrixResult, write_results
from lab.image.guest_image import GuestImage
from lab.image.store import find_image
from lab.results.store import index_quietly
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


@contextmanager
def started_hosts(cells: list[Cell], console: Console, engine: Engine | None) -> Iterator[dict[str | None, str | None]]:
    """Each cell's `--host`: `ssh://…` as given, `kvm-host[:KERNEL]` started here for the whole matrix
    (one host per entry, its cells run one after another on it) and stopped when the matrix ends."""
    urls: dict[str | None, str | None] = {None: None}
    with ExitStack() as stack:
        for entry in dict.fromkeys(cell.host for cell in cells if cell.host is not None):
            spec = HostSpec.parse(entry)
            if spec is None:
                urls[entry] = entry
                continue
            if engine is not None and not isinstance(engine, LocalEngine):
                raise UsageError(f"hosts: {entry} is started on this machine, which {type(engine).__name__} "
                                 "nodes cannot reach: start it on a node (`lab host start`) and name it ssh://…")
            console.print(escape(f"host {entry}: starting"))
            host = stack.enter_context(start_host(spec.image, spec.kernel_deb,
                                                  log=lambda line: console.print(escape(f"  {line}"))))
            console.print(escape(f"host {entry}: {host.url} (kernel {host.kernel_release})"))
            urls[entry] = host.url
        yield urls


def run_matrix(matrix: Matrix, runs_root: Path, workers: int, console: Console,
               engine: Engine | None = None, retries: int = 0) -> MatrixResult:
    """Prepare the images, run every cell (on this machine unless `engine` says otherwise), retry each cell
    that failed up to `retries` times, write matrix.json, junit.xml and report.html and index the matrix in
    the results store; re-raises an interrupt."""
    cells = matrix.cells()
    images = _prepare_images(cells, matrix.arch, console)
    with started_hosts(cells, console, engine) as hosts:
        return _run_cells(matrix, cells, images, hosts, runs_root, workers, console, engine, retries)


def _retry_failed(runs: list[CellRun], result: MatrixResult, retries: int, workers: int, engine: Engine,
                  console: Console) -> None:
    """Run each FAIL cell again, up to `retries` times, each attempt in a run directory of its own.

    A cell that passes on a retry ends PASS and is flaky: its first attempt's directory stays its
    run directory, the retries are listed in matrix.json, and the results store tells them apart.
    """
    for attempt in range(1, retries + 1):
        failed = [run for run in runs if run.outcome.status is CellStatus.FAIL]
        if not failed:
            return
        directories = [run.outcome.run_dir.with_name(f"{run.outcome.run_dir.name}.retry{attempt}") for run in failed]
        again = [CellRun(CellOutcome(run.cell, directory), replace(run.options, run_dir=directory))
                 for run, directory in zip(failed, directories, strict=True)]
        console.print(f"retry {attempt}: {len(again)} failed cell(s)")
        engine.run(again, min(workers, len(again)), lambda outcome: console.print(finished_line(outcome)))
        for run, retry in zip(failed, again, strict=True):
            result.retries.setdefault(run.cell.id, []).append(retry.outcome.run_dir)
            if retry.outcome.status is CellStatus.PASS:
                run.outcome.end(CellStatus.PASS, f"flaky: passed on retry {attempt} after: {run.outcome.reason}")


def _run_cells(matrix: Matrix, cells: list[Cell], images: dict[tuple[str, str], GuestImage],
               hosts: dict[str | None, str | None], runs_root: Path, workers: int, console: Console,
               engine: Engine | None, retries: int) -> MatrixResult:
    result = MatrixResult(unique_dir(runs_root, f"{matrix.name}-{timestamp()}"))
    runs = []
    for cell in cells:
        run_dir = result.directory / cell.dir_name
        image = images[(image_name(cell.scenario, matrix.arch), cell.kernel)]
        runs.append(CellRun(CellOutcome(cell, run_dir), RunOptions(
            arch=matrix.arch, image=str(image.path), accel=cell.accel, psci=cell.psci, qemu=cell.qemu,
            host=hosts[cell.host], run_dir=run_dir)))
    result.outcomes = [run.outcome for run in runs]
    workers = min(workers, len(cells))
    console.print(f"[bold]{matrix.name}[/]: {len(cells)} cells, {workers} at a time, in "
                  f"{escape(str(result.directory))}")
    started, clock = datetime.now(UTC), time.monotonic()
    try:
        with live_table(console, result.outcomes):
            engine = engine or LocalEngine()
            engine.run(runs, workers, lambda outcome: console.print(finished_line(outcome)))
            _retry_failed(runs, result, retries, workers, engine, console)
    finally:
        write_results(result, matrix, workers, started, clock)
        print_summary(console, matrix.name, result, time.monotonic() - clock)
        for line in index_quietly(result.directory, runs_root):
            console.print(escape(line))
    return result
