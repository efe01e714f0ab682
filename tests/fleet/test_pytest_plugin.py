"""The pytest plugin, run by pytest itself (pytester): scenario files as items, one per matrix cell."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.machine.accel import kvm_status
from lab.paths import SCENARIOS_DIR, cache_root

pytest_plugins = ["pytester"]

PINNED_KERNEL = "linux-image-cloud-arm64=6.12.117-1"
LAB_CACHE = cache_root()
"""Read before pytester points HOME at a scratch directory, where no image is built."""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A directory with three shipped scenarios, a matrix naming two of them, and a YAML file that is no scenario."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(LAB_CACHE))
    (pytester.path / "scenarios").mkdir()
    for name in ("hibernate-resume", "poweroff-baseline", "psci-none"):
        shutil.copy(SCENARIOS_DIR / f"{name}.yaml", pytester.path / "scenarios")
    (pytester.path / "scenarios/notes.yaml").write_text("owner: lab\n")
    (pytester.path / "matrix.yaml").write_text(
        f'kernels: [default, "{PINNED_KERNEL}"]\nscenarios: [hibernate-resume, poweroff-baseline]\n'
        "personalities: [kvm, none]\n")
    return pytester


def _collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_matrix_collects_one_item_per_scenario_and_cell(project):
    result = project.runpytest("--collect-only", "-q", "--lab-matrix", "matrix.yaml", "scenarios")
    assert result.ret == pytest.ExitCode.OK
    assert _collected(result) == [
        f"scenarios/{scenario}.yaml::{scenario}[kernel={kernel},psci={psci}]"
        for scenario in ("hibernate-resume", "poweroff-baseline")
        for kernel in ("default", PINNED_KERNEL)
        for psci in ("kvm", "none")
    ]


def test_options_alone_collect_every_scenario_file_and_override_the_matrix(project):
    alone = project.runpytest("--collect-only", "-q", "scenarios", "--lab-kernel", "default", "--lab-accel", "tcg")
    assert _collected(alone) == [f"scenarios/{name}.yaml::{name}[kernel=default,accel=tcg]"
                                 for name in ("hibernate-resume", "poweroff-baseline", "psci-none")]
    overridden = project.runpytest("--collect-only", "-q", "--lab-matrix", "matrix.yaml", "--lab-psci", "alpha-spec",
                                   "scenarios/poweroff-baseline.yaml")
    assert _collected(overridden) == [
        f"scenarios/poweroff-baseline.yaml::poweroff-baseline[kernel={kernel},psci=alpha-spec]"
        for kernel in ("default", PINNED_KERNEL)
    ]


def test_inert_without_lab_options(project):
    result = project.runpytest("--collect-only", "-q", "scenarios")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert _collected(result) == []


def test_bad_options_and_files_are_one_line_errors(project):
    option = project.runpytest("--collect-only", "scenarios", "--lab-psci", "kvn")
    assert option.ret == pytest.ExitCode.USAGE_ERROR
    option.stderr.fnmatch_lines(["ERROR: --lab-psci: 'kvn' is not one of *"])
    (project.path / "broken.yaml").write_text("kernels: [default]\nscenarios: [poweroff-baseline]\nworkers: many\n")
    matrix = project.runpytest("--collect-only", "--lab-matrix", "broken.yaml", "scenarios")
    assert matrix.ret == pytest.ExitCode.USAGE_ERROR
    matrix.stderr.fnmatch_lines(["ERROR: broken.yaml:3: workers: 'many' is not of type 'integer'"])
    (project.path / "scenarios/typo.yaml").write_text("name: typo\ndescription: x\nsteps:\n  - hibernat: {}\n")
    scenario = project.runpytest("--collect-only", "scenarios", "--lab-kernel", "default")
    assert scenario.ret == pytest.ExitCode.INTERRUPTED
    scenario.stdout.fnmatch_lines(["*scenarios/typo.yaml:4: steps/0/hibernat: *'hibernat' was unexpected*"])
    assert "Traceback" not in scenario.stdout.str()


@pytest.mark.skipif(kvm_status("aarch64")[0], reason="KVM runs arm64 guests here")
def test_a_run_the_lab_refuses_fails_with_its_reason_and_no_traceback(project, default_image):
    result = project.runpytest("scenarios/poweroff-baseline.yaml", "--lab-accel", "kvm", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*_ poweroff-baseline[[]kernel=default,accel=kvm[]] _*",
                                 "--accel kvm is not possible here: *"])
    assert "lab/run.py" not in result.stdout.str()


@pytest.mark.guest
def test_poweroff_baseline_on_two_kernels_with_two_xdist_workers(project, default_image, tmp_path):
    junit = tmp_path / "junit.xml"
    result = project.runpytest_subprocess(
        "-n", "2", "--lab-kernel", "default", "--lab-kernel", PINNED_KERNEL, "--lab-runs-dir", str(tmp_path / "runs"),
        f"--junitxml={junit}", "scenarios/poweroff-baseline.yaml", timeout=900)
    result.assert_outcomes(passed=2)
    cases = ET.parse(junit).getroot().findall(".//testcase")
    assert sorted(case.get("name") for case in cases) == [
        "poweroff-baseline[kernel=default]", f"poweroff-baseline[kernel={PINNED_KERNEL}]"]
    run_dirs = set()
    for case in cases:
        properties = {p.get("name"): p.get("value") for p in case.findall("properties/property")}
        assert properties["verdict"] == "PASS"
        run_dir = Path(properties["run_dir"])
        assert run_dir.parent == tmp_path / "runs"
        assert json.loads((run_dir / "result.json").read_text())["verdict"]["status"] == "PASS"
        run_dirs.add(run_dir)
    assert len(run_dirs) == 2
