"""`lab triage` and `--catalogue` refuse bad input with one line and exit 2, before any guest boots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_cli import lab

PASSED_RUN = Path(__file__).parents[1] / "report" / "data" / "run-no-stale-resume"


def _one_line_exit_2(done, starts: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(starts), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_triage_refuses_a_run_that_passed(tmp_path):
    run = shutil.copytree(PASSED_RUN, tmp_path / "run")
    _one_line_exit_2(lab("triage", str(run)), f"lab: error: {run} passed: there is nothing to triage")
    assert not (run / "triage.json").exists()


def test_triage_refuses_a_directory_that_is_not_a_run(tmp_path):
    _one_line_exit_2(lab("triage", str(tmp_path)), f"lab: error: {tmp_path} is not a run directory")


@pytest.mark.parametrize("command", [["scenario", "hibernate-resume"], ["triage", str(PASSED_RUN)]])
def test_a_catalogue_that_does_not_validate_is_refused(tmp_path, command):
    bad = tmp_path / "mine.yaml"
    bad.write_text("entries:\n  - {label: x, pattern: 'a', severity: fatal, advice: y}\n")
    done = lab(*command, "--catalogue", str(bad), cwd=tmp_path)
    _one_line_exit_2(done, f"lab: error: {bad}:2: entries/0/severity: 'fatal' is not one of")
    assert not (tmp_path / "runs").exists()


def test_triage_refuses_a_failed_run_that_never_hibernated(tmp_path):
    run = shutil.copytree(PASSED_RUN, tmp_path / "run")
    result = json.loads((run / "result.json").read_text())
    result["verdict"]["status"] = "FAIL"
    (run / "result.json").write_text(json.dumps(result))
    (run / "scenario.json").write_text(json.dumps({"name": "boots-only", "steps": [{"boot": {"expect": "resumed"}}]}))
    _one_line_exit_2(lab("triage", str(run)), "lab: error: scenario boots-only never hibernates")
