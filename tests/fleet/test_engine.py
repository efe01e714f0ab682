"""The engine seam without QEMU: an engine that ends cells with canned run directories, and how cells are settled."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

import lab.fleet.run
from lab.fleet.engine import CellOutcome, CellRun, CellStatus, mark_not_run, settle
from lab.fleet.matrix import Cell, load_matrix
from lab.fleet.run import run_matrix
from lab.image.guest_image import GuestImage
from lab.rundir import RunDirectory
from lab.scenario.model import find_scenario

PINNED_KERNEL = "linux-image-cloud-arm64=6.12.117-1"
MATRIX_FIELDS = {"matrix", "file", "arch", "workers", "started", "seconds", "counts", "passed", "cells",
                 "kernel_phases"}
CELL_FIELDS = {"id", "scenario", "kernel", "psci", "accel", "qemu", "qemu_host", "status", "reason", "start", "seconds",
               "run_dir", "host", "retries"}

Ending = Callable[[RunDirectory], bool]
"""Writes what a cell's process left in its run directory; says whether it reached a verdict."""


def _verdict(status: str, reason: str) -> Ending:
    def write(run_dir: RunDirectory) -> bool:
        check = {"name": "powered off", "passed": status == "PASS", "detail": reason}
        run_dir.write_result({"scenario": {"name": run_dir.path.name.split(".")[0]}, "seconds": 1.5,
                              "verdict": {"status": status, "reason": reason, "checks": [check]},
                              "environment": {"accel": "tcg", "image": {"name": "debian-arm64"}}})
        return True
    return write


def _error(last_words: str) -> Ending:
    def write(run_dir: RunDirectory) -> bool:
        run_dir.output_log.write_text(f"boot expect=fresh\n{last_words}\n")
        return False
    return write


def _silent(run_dir: RunDirectory) -> bool:
    """A process that died before it wrote a word."""
    return False


class CannedEngine:
    """Ends each cell at once on a made-up node, as its canned ending says; interrupts after `interrupt_after`."""

    def __init__(self, endings: dict[str, Ending], interrupt_after: int | None = None) -> None:
        self.endings = endings
        self.interrupt_after = interrupt_after
        self.runs: list[CellRun] = []
        self.workers = 0

    def run(self, runs: list[CellRun], workers: int, on_finished: Callable[[CellOutcome], None]) -> None:
        self.runs, self.workers = runs, workers
        for index, run in enumerate(runs):
            if index == self.interrupt_after:
                run.outcome.run_dir.mkdir()
                run.outcome.start("node07")
                run.outcome.end(CellStatus.INTERRUPTED, "interrupted")
                mark_not_run([later.outcome for later in runs[index + 1:]])
                raise KeyboardInterrupt
            run.outcome.run_dir.mkdir()
            run.outcome.start("node07")
            reached = self.endings[run.cell.id](RunDirectory(run.outcome.run_dir))
            settle(run.outcome, reached_verdict=reached, otherwise="job 7_1 FAILED on node07")
            on_finished(run.outcome)


@pytest.fixture
def images(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """No image is built: every (recipe, kernel) a matrix asks for is recorded and given a made-up directory."""
    asked: list[tuple[str, str]] = []

    def find_image(name: str, kernel: str, log: Callable[[str], None]) -> GuestImage:
        asked.append((name, kernel))
        return GuestImage(Path(f"/images/{name}/{kernel}"), {})

    monkeypatch.setattr(lab.fleet.run, "find_image", find_image)
    return asked


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None, highlight=False, soft_wrap=True), out


def _matrix_file(tmp_path: Path) -> Path:
    path = tmp_path / "seam.yaml"
    path.write_text(f'kernels: [default, "{PINNED_KERNEL}"]\nscenarios: [poweroff-baseline, psci-none]\n'
                    "accelerators: [tcg]\n")
    return path


def test_any_engine_s_cells_are_shown_and_written_as_matrix_json_junit_and_report(tmp_path, images):
    matrix = load_matrix(_matrix_file(tmp_path))
    ids = [cell.id for cell in matrix.cells()]
    engine = CannedEngine({ids[0]: _verdict("PASS", "8 checks passed"), ids[1]: _verdict("FAIL", "it hibernated"),
                           ids[2]: _error("lab: error: no swap"), ids[3]: _silent})
    console, out = _console()
    result = run_matrix(matrix, tmp_path / "runs", 8, console, engine=engine)

    assert not result.passed
    assert engine.workers == 4
    assert images == [("debian-arm64", "default"), ("debian-arm64", PINNED_KERNEL)]
    for run in engine.runs:
        assert (run.options.arch, run.options.accel, run.options.psci) == ("arm64", "tcg", None)
        assert run.options.image == f"/images/debian-arm64/{run.cell.kernel}"
        assert run.options.run_dir == run.outcome.run_dir == result.directory / run.cell.dir_name

    summary = json.loads((result.directory / "matrix.json").read_text())
    assert set(summary) == MATRIX_FIELDS
    assert (summary["matrix"], summary["workers"], summary["passed"]) == ("seam", 4, False)
    assert summary["counts"] == {"PASS": 1, "FAIL": 1, "ERROR": 2}
    assert all(set(cell) == CELL_FIELDS for cell in summary["cells"])
    assert [(cell["id"], cell["status"], cell["reason"], cell["host"]) for cell in summary["cells"]] == [
        (ids[0], "PASS", "8 checks passed", "node07"), (ids[1], "FAIL", "it hibernated", "node07"),
        (ids[2], "ERROR", "no swap", "node07"), (ids[3], "ERROR", "job 7_1 FAILED on node07", "node07"),
    ]
    assert all(Path(cell["run_dir"]).parent == result.directory and cell["start"] >= 0 for cell in summary["cells"])

    suites = ET.parse(result.directory / "junit.xml").getroot()
    assert (len(suites.findall("testsuite")), suites.get("failures")) == (4, "4")
    report = result.report.read_text()
    assert "4 runs" in report and "1 passed, 3 did not" in report

    shown = out.getvalue().splitlines()
    assert shown[:3] == ["image debian-arm64 with kernel default", f"image debian-arm64 with kernel {PINNED_KERNEL}",
                         f"seam: 4 cells, 4 at a time, in {result.directory}"]
    assert shown[3].startswith(f"PASS {ids[0]}  ") and shown[3].endswith("s  8 checks passed")
    assert shown[-1].startswith("FAIL seam: 2 ERROR, 1 FAIL, 1 PASS  [") and shown[-1].endswith(f"{result.report}]")


def test_an_interrupted_matrix_still_writes_its_results_and_re_raises(tmp_path, images):
    matrix = load_matrix(_matrix_file(tmp_path))
    ids = [cell.id for cell in matrix.cells()]
    console, out = _console()
    with pytest.raises(KeyboardInterrupt):
        run_matrix(matrix, tmp_path / "runs", 1, console,
                   engine=CannedEngine({ids[0]: _verdict("PASS", "8 checks passed")}, interrupt_after=1))
    (directory,) = (path for path in (tmp_path / "runs").iterdir() if path.is_dir())
    cells = json.loads((directory / "matrix.json").read_text())["cells"]
    assert [(cell["status"], cell["host"], cell["run_dir"] is None) for cell in cells] == [
        ("PASS", "node07", False), ("INTERRUPTED", "node07", False), ("NOT-RUN", None, True), ("NOT-RUN", None, True),
    ]
    assert ET.parse(directory / "junit.xml").getroot().get("tests") == "3"
    assert (directory / "report.html").exists()
    assert "FAIL seam: 1 INTERRUPTED, 2 NOT-RUN, 1 PASS" in out.getvalue()


@pytest.fixture
def outcome(tmp_path: Path) -> CellOutcome:
    run_dir = tmp_path / "cell"
    run_dir.mkdir()
    started = CellOutcome(Cell(find_scenario("poweroff-baseline")), run_dir)
    started.start("here")
    return started


def test_a_cell_that_reached_a_verdict_takes_it_from_result_json(outcome):
    _verdict("FAIL", "it hibernated")(RunDirectory(outcome.run_dir))
    settle(outcome, reached_verdict=True, otherwise="unused")
    assert (outcome.status, outcome.reason, outcome.finished) == ("FAIL", "it hibernated", True)
    assert outcome.seconds > 0


def test_a_cell_that_did_not_reach_one_is_an_error_with_its_last_words_or_the_engine_s(outcome, tmp_path):
    _verdict("PASS", "8 checks passed")(RunDirectory(outcome.run_dir))
    _error("lab: error: --accel kvm is not possible here")(RunDirectory(outcome.run_dir))
    settle(outcome, reached_verdict=False, otherwise="worker exited with status 2")
    assert (outcome.status, outcome.reason) == ("ERROR", "--accel kvm is not possible here")
    silent = CellOutcome(outcome.cell, tmp_path / "silent")
    silent.start("here")
    settle(silent, reached_verdict=True, otherwise="worker exited with status 0")
    assert (silent.status, silent.reason) == ("ERROR", "worker exited with status 0")


def test_a_cell_that_never_started_took_no_time_and_ran_nowhere(tmp_path):
    waiting = CellOutcome(Cell(find_scenario("poweroff-baseline")), tmp_path / "never")
    assert not waiting.finished
    mark_not_run([waiting])
    assert waiting.to_json(matrix_started=0.0) == {
        "id": "poweroff-baseline[kernel=default]", "scenario": "poweroff-baseline", "kernel": "default", "psci": None,
        "accel": None, "qemu": None, "qemu_host": None, "status": "NOT-RUN", "reason": "interrupted before it started",
        "start": None, "seconds": 0.0, "run_dir": None, "host": None,
    }
