"""JUnit XML from a recorded run: one test case per check plus the run's own, parsed back as CI would."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.report.junit import RUN_TESTCASE, write_junit, write_matrix_junit
from lab.rundir import RunDirectory

RECORDED_RUN = Path(__file__).parent / "data" / "run-no-stale-resume"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(RECORDED_RUN, tmp_path / "run"))


def _failed_copy(run_dir: Path, reason: str, failing_check: str | None) -> Path:
    result = json.loads((run_dir / "result.json").read_text())
    result["verdict"]["status"] = "FAIL"
    result["verdict"]["reason"] = reason
    for check in result["verdict"]["checks"]:
        if check["name"] == failing_check:
            check["passed"] = False
            check["detail"] = "hibernate ended as hibernate-off, expected hibernate-off2"
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def test_passing_run_has_one_testcase_per_check_plus_the_run(run_dir: Path) -> None:
    suite = ET.parse(write_junit(RunDirectory(run_dir))).getroot()
    cases = suite.findall("testcase")
    assert suite.tag == "testsuite"
    assert suite.get("name") == "no-stale-resume"
    assert len(cases) == 14
    assert suite.get("tests") == "14"
    assert suite.get("failures") == "0"
    assert {case.get("classname") for case in cases} == {"no-stale-resume"}
    assert cases[0].get("name") == "boot1 power-off"
    assert cases[-1].get("name") == RUN_TESTCASE
    assert not suite.findall(".//failure")
    assert str(run_dir.resolve()) in suite.findtext("system-out", "")
    assert suite.find("properties/property[@name='psci_personality']").get("value") == "kvm"


def test_failed_check_and_verdict_become_failures(run_dir: Path) -> None:
    reason = "boot1 power-off: hibernate ended as hibernate-off, expected hibernate-off2 (line 9)"
    suite = ET.parse(write_junit(RunDirectory(_failed_copy(run_dir, reason, "boot1 power-off")))).getroot()
    failed = {case.get("name"): case.find("failure") for case in suite.findall("testcase")
              if case.find("failure") is not None}
    assert suite.get("failures") == "2"
    assert set(failed) == {"boot1 power-off", RUN_TESTCASE}
    assert failed["boot1 power-off"].text == "hibernate ended as hibernate-off, expected hibernate-off2"
    assert failed[RUN_TESTCASE].get("message") == reason


def test_aborted_run_fails_on_its_verdict_even_when_its_checks_pass(run_dir: Path) -> None:
    aborted = _failed_copy(run_dir, "timed out after 60.0s waiting for boot", None)
    suite = ET.parse(write_junit(RunDirectory(aborted))).getroot()
    failures = suite.findall(".//failure")
    assert len(failures) == 1
    assert failures[0].text == "timed out after 60.0s waiting for boot"


def test_run_without_result_still_reports_a_failure(tmp_path: Path) -> None:
    run_dir = tmp_path / "unfinished"
    run_dir.mkdir()
    (run_dir / "scenario.json").write_text(json.dumps({"name": "poweroff-baseline"}))
    suite = ET.parse(write_junit(RunDirectory(run_dir))).getroot()
    assert suite.get("name") == "poweroff-baseline"
    assert "did not finish" in suite.find("testcase/failure").text


def test_matrix_combines_runs_into_testsuites(run_dir: Path, tmp_path: Path) -> None:
    failed = _failed_copy(Path(shutil.copytree(RECORDED_RUN, tmp_path / "failed")), "interrupted", None)
    runs = [RunDirectory(run_dir), RunDirectory(failed)]
    root = ET.parse(write_matrix_junit(runs, tmp_path / "matrix.xml")).getroot()
    assert root.tag == "testsuites"
    assert len(root.findall("testsuite")) == 2
    assert root.get("tests") == "28"
    assert root.get("failures") == "1"


def test_each_catalogue_finding_is_a_test_case_that_informs(run_dir: Path) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    result["verdict"]["findings"] = [{"boot": "boot2", "label": "kernel panic", "severity": "critical",
                                      "advice": "Read the lines before it.", "count": 1, "source": "catalogue.yaml:6",
                                      "line": "[   31.788014] Kernel panic - not syncing: sysrq triggered crash"}]
    (run_dir / "result.json").write_text(json.dumps(result))
    suite = ET.parse(write_junit(RunDirectory(run_dir))).getroot()
    (case,) = [c for c in suite.findall("testcase") if c.get("name", "").startswith("finding:")]
    assert case.get("name") == "finding: kernel panic [critical] in boot2"
    assert case.find("failure") is None and "Read the lines before it." in case.find("system-out").text
    assert suite.get("failures") == "0"
