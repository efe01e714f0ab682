"""JUnit XML from a run's `result.json`, so CI systems show each check as a test case.

Every check becomes a test case; one more test case stands for the run itself and fails with
the verdict's reason, so a run that stopped early (an error, an interrupt) still fails in CI
even when the few checks it got to all passed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

RUN_TESTCASE = "run verdict"


def _load_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "result.json").read_text())
    except FileNotFoundError:
        return None


def _scenario_name(run_dir: Path, result: dict[str, Any] | None) -> str:
    if result is not None:
        return result["scenario"]["name"]
    try:
        return json.loads((run_dir / "scenario.json").read_text())["name"]
    except (OSError, ValueError, KeyError):
        return run_dir.name


def _testcase(suite: ET.Element, classname: str, name: str, seconds: float, failure: str | None) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")
    if failure is not None:
        ET.SubElement(case, "failure", message=failure, type="failure").text = failure


def _properties(suite: ET.Element, environment: dict[str, Any]) -> None:
    image = environment.get("image") or {}
    shown = {
        "image": image.get("name"), "kernel_release": image.get("kernel_release"), "accel": environment.get("accel"),
        "psci_personality": environment.get("psci_personality"), "qemu": environment.get("qemu"),
        "host": environment.get("host"),
    }
    properties = ET.SubElement(suite, "properties")
    for name, value in shown.items():
        if value is not None:
            ET.SubElement(properties, "property", name=name, value=str(value))


def run_suite(run_dir: Path) -> ET.Element:
    """One `testsuite` element for one run directory, with or without a `result.json`."""
    result = _load_result(run_dir)
    scenario = _scenario_name(run_dir, result)
    suite = ET.Element("testsuite", name=scenario)
    if result is None:
        _testcase(suite, scenario, RUN_TESTCASE, 0.0, "no result.json: the run did not finish")
        seconds = 0.0
    else:
        verdict = result["verdict"]
        seconds = float(result.get("seconds", 0.0))
        _properties(suite, result.get("environment", {}))
        for check in verdict["checks"]:
            _testcase(suite, scenario, check["name"], 0.0, None if check["passed"] else check["detail"])
        _testcase(suite, scenario, RUN_TESTCASE, seconds, None if verdict["status"] == "PASS" else verdict["reason"])
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(case.find("failure") is not None for case in cases)))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    suite.set("time", f"{seconds:.3f}")
    ET.SubElement(suite, "system-out").text = f"run directory: {run_dir.resolve()}"
    return suite


def _write(root: ET.Element, out: Path) -> Path:
    ET.indent(root)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out


def write_junit(run_dir: Path) -> Path:
    """Write `junit.xml` into the run directory: one test suite, one test case per check plus the run's."""
    return _write(run_suite(run_dir), run_dir / "junit.xml")


def write_matrix_junit(run_dirs: list[Path], out: Path) -> Path:
    """Write one `testsuites` document with a test suite per run, for a matrix of runs in one CI job."""
    root = ET.Element("testsuites", name="hibernation lab")
    suites = [run_suite(run_dir) for run_dir in run_dirs]
    root.extend(suites)
    for total in ("tests", "failures", "errors"):
        root.set(total, str(sum(int(suite.get(total, "0")) for suite in suites)))
    root.set("time", f"{sum(float(suite.get('time', '0')) for suite in suites):.3f}")
    return _write(root, out)
