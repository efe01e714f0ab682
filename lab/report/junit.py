"""JUnit XML from a run's `result.json`, so CI systems show each check as a test case.

Every check becomes a test case; one more test case stands for the run itself and fails with
the verdict's reason, so a run that stopped early (an error, an interrupt) still fails in CI
even when the few checks it got to all passed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from lab.errors import printable
from lab.rundir import RunDirectory

RUN_TESTCASE = "run verdict"


def _scenario_name(run_dir: RunDirectory, result: dict[str, Any] | None) -> str:
    if result is not None:
        return str(result["scenario"]["name"])
    return str((run_dir.read_scenario() or {}).get("name", run_dir.path.name))


def _testcase(suite: ET.Element, classname: str, name: str, seconds: float, failure: str | None) -> None:
    """Names and failures may quote the guest's console, whose control characters XML cannot hold."""
    case = ET.SubElement(suite, "testcase", classname=classname, name=printable(name), time=f"{seconds:.3f}")
    if failure is not None:
        ET.SubElement(case, "failure", message=printable(failure), type="failure").text = printable(failure)


def _finding(suite: ET.Element, classname: str, finding: dict[str, Any]) -> None:
    """A catalogue finding is a test case of its own, which informs and does not fail: the run's verdict does."""
    name = f"finding: {finding['label']} [{finding['severity']}] in {finding['boot']}"
    case = ET.SubElement(suite, "testcase", classname=f"{classname}.findings", name=printable(name), time="0.000")
    ET.SubElement(case, "system-out").text = printable(f"{finding['line']} (x{finding['count']}); {finding['advice']}")


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


def run_suite(run_dir: RunDirectory) -> ET.Element:
    """One `testsuite` element for one run directory, with or without a `result.json`."""
    result = run_dir.read_result()
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
        for finding in verdict.get("findings", []):
            _finding(suite, scenario, finding)
        _testcase(suite, scenario, RUN_TESTCASE, seconds, None if verdict["status"] == "PASS" else verdict["reason"])
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(case.find("failure") is not None for case in cases)))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    suite.set("time", f"{seconds:.3f}")
    ET.SubElement(suite, "system-out").text = f"run directory: {run_dir.path.resolve()}"
    return suite


def _write(root: ET.Element, out: Path) -> Path:
    ET.indent(root)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out


def write_junit(run_dir: RunDirectory) -> Path:
    """Write `junit.xml` into the run directory: one test suite, one test case per check plus the run's."""
    return _write(run_suite(run_dir), run_dir.junit)


def write_matrix_junit(run_dirs: list[RunDirectory], out: Path) -> Path:
    """Write one `testsuites` document with a test suite per run, for a matrix of runs in one CI job."""
    root = ET.Element("testsuites", name="hibernation lab")
    suites = [run_suite(run_dir) for run_dir in run_dirs]
    root.extend(suites)
    for total in ("tests", "failures", "errors"):
        root.set(total, str(sum(int(suite.get(total, "0")) for suite in suites)))
    root.set("time", f"{sum(float(suite.get('time', '0')) for suite in suites):.3f}")
    return _write(root, out)
