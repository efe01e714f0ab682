"""The pm_test ladder judged from a real ladder run (data/pm-test-ladder: Debian's generic arm64 7.2 kernel,
one boot per level, recorded by `lab triage`), with the shipped catalogue and with a user's expectation."""

import json
from pathlib import Path

from lab.judge.catalogue import catalogue
from lab.judge.ladder import LevelResult, LevelStatus, first_failing, judge_level, level_segments, summary_line
from lab.rundir import read_console_file

DATA = Path(__file__).parent / "data" / "pm-test-ladder"
EXPECTATION = Path(__file__).parents[1] / "scenario" / "data" / "expect-devices-catalogue.yaml"
LEVELS = ("freezer", "devices", "platform", "processors", "core")


def _ladder(entries) -> list[LevelResult]:
    checks = json.loads((DATA / "checks.json").read_text())["checks"]
    results = []
    for number, level in enumerate(LEVELS, start=1):
        check = next(c for c in checks if c["name"] == f"boot{number} pm_test={level}")
        lines = level_segments(read_console_file(DATA / f"console-boot{number}.log")).get(level)
        results.append(judge_level(level, check, lines, entries, f"boot{number}"))
    return results


def test_a_healthy_kernel_passes_every_level():
    results = _ladder(catalogue())
    assert [r.status for r in results] == [LevelStatus.OK] * 5
    assert first_failing(results) is None
    assert summary_line(results) == "freezer ok, devices ok, platform ok, processors ok, core ok"


def test_an_expectation_that_fails_at_devices_is_found_there():
    results = _ladder(catalogue(EXPECTATION))
    assert first_failing(results).level == "devices"
    summary = summary_line(results)
    assert summary.startswith("freezer ok, devices FAILS: '[")
    assert "PM: freeze of devices complete after" in summary and "platform" not in summary


def test_each_level_s_lines_start_at_its_marker():
    segments = level_segments(["[ 1.0] before", "[ 2.0] lab-triage: freezer", "[ 3.0] a",
                               "[ 4.0] lab-triage: test_resume", "[ 5.0] b"])
    assert segments == {"freezer": ["[ 3.0] a"], "test_resume": ["[ 5.0] b"]}


def test_a_level_never_reached_and_a_failed_trial_check():
    assert judge_level("core", None, None, []).status is LevelStatus.NOT_REACHED
    failed = judge_level("platform", {"passed": False, "detail": "ended as hang"}, ["[ 1.0] x"], [])
    assert (failed.status, failed.reason) == (LevelStatus.FAILS, "ended as hang")
    assert summary_line([LevelResult("freezer", LevelStatus.OK), failed]) == "freezer ok, platform FAILS: ended as hang"
