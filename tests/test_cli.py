"""The `lab` command as a user meets it: one clear line and exit 2 for bad input, never a traceback."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from lab.machine.accel import kvm_status

LAB = [sys.executable, "-m", "lab.cli"]


def lab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scenario", "no-such-scenario"], "lab: error: no scenario named 'no-such-scenario'"),
        (["scenario", "/nonexistent/x.yaml"], "lab: error: no scenario file /nonexistent/x.yaml"),
        (["scenario", "hibernate-resume", "--image", "no-such-image"], "lab: error: image no-such-image is not built"),
        (["scenario", "hibernate-resume", "--arch", "sparc"], "lab: error: unknown arch 'sparc'"),
        (["scenario", "hibernate-resume", "--psci", "bogus"], "lab: error: unknown PSCI personality 'bogus'"),
        (["disk", "inspect", "/nonexistent.raw"], "lab: error:"),
        (["disk", "set-signature", "/nonexistent.raw", "zz"], "lab: error:"),
        (["images", "build", "no-such-recipe"], "lab: error: no image recipe named 'no-such-recipe'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    done = lab(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


@pytest.mark.depends_on_kvm
@pytest.mark.skipif(kvm_status("aarch64")[0], reason="KVM runs arm64 guests here")
def test_accel_kvm_where_kvm_cannot_run_arm64_guests_is_refused_with_the_reason(tmp_path: Path) -> None:
    done = lab("scenario", "hibernate-resume", "--accel", "kvm", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"lab: error: --accel kvm is not possible here: {kvm_status('aarch64')[1]}"



def test_invalid_scenario_file_names_line_and_field(tmp_path):
    scenario = tmp_path / "mine.yaml"
    scenario.write_text("name: mine\ndescription: x\nsteps:\n  - boot\n  - hibernate: {expect: sleepy}\n")
    done = lab("scenario", str(scenario), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"lab: error: {scenario}:5: steps/1/hibernate/expect:")


def test_scenarios_list_and_show():
    listed = lab("scenarios", "list")
    assert listed.returncode == 0
    assert "hibernate-resume" in listed.stdout and "no-stale-resume" in listed.stdout
    shown = lab("scenarios", "show", "hibernate-resume")
    assert shown.returncode == 0 and "name: hibernate-resume" in shown.stdout


@pytest.mark.parametrize(
    ("hibernation", "message"),
    [
        ("{via: systemd}", "`hibernation: via: systemd` needs a system image (guest: system)"),
        ("{image_on: file}", "image debian-arm64 has no swap file: `image_on: file` needs a system image"),
        ("{resume_from: initramfs}", "image debian-arm64 resumes through the lab's own init"),
        ("{via: hibernate}", "hibernation/via:"),
        ("{image_size: -1}", "hibernation/image_size:"),
    ],
)
def test_a_hibernation_path_the_guest_cannot_take_is_one_line(hibernation, message, tmp_path):
    """Refused before anything boots: the run directory says why, and the user gets one line."""
    scenario = tmp_path / "paths.yaml"
    scenario.write_text(f"name: paths\ndescription: x\nhibernation: {hibernation}\nsteps:\n  - boot\n")
    done = lab("scenario", str(scenario), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_list_and_show_are_scenario_names_like_any_other(tmp_path):
    """`lab scenario NAME` only ever runs NAME: a scenario may be called `list`."""
    done = lab("scenario", "list", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("lab: error: no scenario named 'list'")
    mine = tmp_path / "list.yaml"
    mine.write_text("name: list\ndescription: x\nsteps:\n  - boot\n  - hibernate: {expect: sleepy}\n")
    done = lab("scenario", str(mine), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(f"lab: error: {mine}:5:")


@pytest.mark.parametrize("old", [["image", "inspect", "x.raw"], ["scenario", "show", "hibernate-resume"]])
def test_old_spellings_are_gone(old, tmp_path):
    done = lab(*old, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_progress_lines_reach_a_pipe_as_they_are_printed() -> None:
    """A line printed by a command that then works on for minutes is readable from its pipe at once (CI runs
    without the PYTHONUNBUFFERED a developer's shell may set)."""
    script = ("import time; from lab.cli import line_buffered_output; line_buffered_output(); print('first'); "
              "time.sleep(60)")
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready and process.stdout.readline() == "first\n"
    finally:
        process.kill()
        process.wait(30)
