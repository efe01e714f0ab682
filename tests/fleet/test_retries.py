"""`lab run --retries N` through the engine seam: a failing cell runs again in a directory of its own, and one
that then passes is recorded flaky (matrix.json lists its retries; the results store counts it as flaky)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

import lab.fleet.run
from lab.fleet.engine import CellOutcome, CellRun, settle
from lab.fleet.matrix import load_matrix
from lab.fleet.run import run_matrix
from lab.image.guest_image import GuestImage
from lab.results.compare import by_cell
from lab.results.record import read_directory
from lab.rundir import RunDirectory


class FailingFirst:
    """Ends every cell with a verdict: FAIL on the first attempts named in `fail_first`, PASS otherwise."""

    def __init__(self, fail_first: dict[str, int]) -> None:
        self.fail_first = dict(fail_first)
        self.attempts: list[str] = []

    def run(self, runs: list[CellRun], workers: int, on_finished: Callable[[CellOutcome], None]) -> None:
        for run in runs:
            run.outcome.run_dir.mkdir()
            run.outcome.start("node01")
            self.attempts.append(run.outcome.run_dir.name)
            failing = self.fail_first.get(run.cell.id, 0) > 0
            self.fail_first[run.cell.id] = self.fail_first.get(run.cell.id, 0) - 1
            status = "FAIL" if failing else "PASS"
            RunDirectory(run.outcome.run_dir).write_result({
                "scenario": {"name": run.cell.scenario.name}, "seconds": 1.0,
                "verdict": {"status": status, "reason": "boot1 hung" if failing else "passed", "power_offs": [],
                            "checks": []},
                "environment": {"accel": "tcg"}})
            settle(run.outcome, reached_verdict=True, otherwise="")
            on_finished(run.outcome)


@pytest.fixture(autouse=True)
def _no_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab.fleet.run, "find_image",
                        lambda name, kernel, log: GuestImage(Path(f"/images/{name}/{kernel}"), {}))


def test_a_cell_that_passes_on_retry_is_flaky_and_one_that_never_does_fails(tmp_path: Path) -> None:
    matrix_file = tmp_path / "m.yaml"
    matrix_file.write_text("kernels: [default]\nscenarios: [poweroff-baseline, psci-none]\n")
    matrix = load_matrix(matrix_file)
    flaky, broken = (cell.id for cell in matrix.cells())
    engine = FailingFirst({flaky: 1, broken: 5})
    console = Console(file=io.StringIO(), width=200, color_system=None)
    result = run_matrix(matrix, tmp_path / "runs", 2, console, engine=engine, retries=2)

    assert [outcome.status for outcome in result.outcomes] == ["PASS", "FAIL"]
    assert engine.attempts == ["poweroff-baseline.kernel=default", "psci-none.kernel=default",
                               "poweroff-baseline.kernel=default.retry1", "psci-none.kernel=default.retry1",
                               "psci-none.kernel=default.retry2"]
    cells = json.loads((result.directory / "matrix.json").read_text())["cells"]
    assert [len(cell["retries"]) for cell in cells] == [1, 2]
    assert cells[0]["reason"].startswith("flaky: passed on retry 1")
    runs = by_cell(read_directory(result.directory))
    assert runs[flaky].flaky and not runs[broken].flaky
    assert (tmp_path / "runs" / "results.sqlite").exists()


def test_a_failure_a_known_issue_explains_is_labelled_in_the_matrix_report_and_summary(tmp_path: Path) -> None:
    matrix_file = tmp_path / "m.yaml"
    matrix_file.write_text("kernels: [default]\nscenarios: [psci-none]\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "known-issues.yaml").write_text(
        "known_issues:\n  - id: boot-hangs\n    match: {reason: 'hung$'}\n    link: https://bugs.example/7\n"
        "    advice: the boot hangs on this kernel; wait for 7.3\n")
    matrix = load_matrix(matrix_file)
    [cell] = matrix.cells()
    out = io.StringIO()
    result = run_matrix(matrix, tmp_path / "runs", 1, Console(file=out, width=300, color_system=None),
                        engine=FailingFirst({cell.id: 1}))
    report = (result.directory / "report.html").read_text()
    assert "known issue boot-hangs: the boot hangs on this kernel; wait for 7.3 (https://bugs.example/7)" in report
    assert f"{cell.id}: FAIL is known issue boot-hangs (https://bugs.example/7)" in out.getvalue()
