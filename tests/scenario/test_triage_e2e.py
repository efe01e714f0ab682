"""The pm_test ladder and test_resume on real guests.

Debian's generic arm64 kernel has /sys/power/pm_test (the cloud kernel of the default image does not).
A run held to a real power-off while its hibernation stops at pm_test `devices` fails on purpose; a
user's catalogue (the test's expectation) makes every level from `devices` on fail; `lab triage`'s
ladder must name `devices` as the first failing level, and its test_resume run must write, read and
restore an image in one boot. On the default image, a pm_test level is refused (exit 2, one line).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.scenario.model import load_scenario
from lab.scenario.run import RunOptions, run_scenario
from lab.scenario.triage import triage
from tests.test_cli import lab

pytestmark = pytest.mark.guest

DATA = Path(__file__).parent / "data"
GENERIC = "linux-image-arm64=7.2.13-1"
FAILING = DATA / "pm-test-devices.yaml"
EXPECTATION = DATA / "expect-devices-catalogue.yaml"


def test_the_ladder_finds_the_failing_level_and_test_resume_restores(tmp_path):
    failed = run_scenario(load_scenario(FAILING), RunOptions(run_dir=tmp_path / "run", kernel_deb=GENERIC), [])
    assert not failed.verdict.passed and "pm_test=devices" in failed.verdict.reason
    found = triage(failed.run_dir, [], EXPECTATION, levels=("freezer", "devices", "platform"))
    assert found.summary.startswith("freezer ok, devices FAILS: '[")
    written = json.loads(found.path.read_text())
    assert written["first_failing"] == "devices" and found.path == failed.run_dir / "triage.json"
    assert [level["status"] for level in written["levels"]] == ["ok", "FAILS", "FAILS"]
    resumed = json.loads((Path(written["runs"]["test_resume"]) / "result.json").read_text())
    (trial,) = [c for c in resumed["verdict"]["checks"] if c["name"] == "boot1 test_resume"]
    assert trial["passed"], trial["detail"]
    kinds = [p["kind"] for p in resumed["observations"]["kernel_phases"]["boots"]["boot1"]["phases"]]
    assert kinds.index("image-write") < kinds.index("image-read") < kinds.index("restore") < kinds.index("thaw")


def test_a_pm_test_level_the_kernel_lacks_is_refused(tmp_path, default_image):
    done = lab("scenario", str(FAILING), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == ("lab: error: pm_test devices: the guest kernel has no /sys/power/pm_test "
                           "(built without CONFIG_PM_DEBUG; Debian's cloud kernels are)\n")
    (run,) = (tmp_path / "runs").iterdir()
    assert {"result.json", "junit.xml", "report.html"} <= {p.name for p in run.iterdir()}
