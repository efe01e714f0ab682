"""QEMU killed under a running guest, through `lab scenario` as a user runs it: outside a power-off the
failure is classed `vmm-crash` in the step where it happened, in every report; after a power-off that QEMU
did not survive, the steps that need the guest are reported as not run, with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.deadline import wait_until

pytestmark = pytest.mark.guest

OUTSIDE_A_POWER_OFF = """\
name: vmm-crash-outside
description: QEMU dies while a command runs on the guest.
steps:
  - boot: {expect: fresh}
  - run: {command: "sleep 60", over: serial, timeout: 120}
  - check: {evidence: absent}
"""

IN_A_POWER_OFF = """\
name: vmm-crash-power-off
description: QEMU dies while the guest hibernates.
steps:
  - boot: {expect: fresh}
  - mark
  - hibernate: {expect: hibernate-off2}
  - boot: {expect: resumed}
  - check: {evidence: present}
"""


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _qemu_of(run_dir: Path) -> list[int]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().startswith("qemu-system") and str(run_dir).encode() in (
                    comm.parent / "cmdline").read_bytes():
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return found


def _run_and_kill_qemu(tmp_path: Path, scenario: str, step: str, delay: float) -> tuple[Path, str]:
    """Run the scenario with `lab`; SIGKILL its QEMU `delay` seconds into the first `step` step."""
    (tmp_path / "scenario.yaml").write_text(scenario)
    runs = tmp_path / "runs"
    lab = subprocess.Popen([sys.executable, "-m", "lab.cli", "scenario", str(tmp_path / "scenario.yaml"),
                            "--runs-dir", str(runs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def started() -> Path | None:
            for run_dir in runs.glob("*"):
                if any(e["kind"] == "step-start" and e["step"] == step for e in _events(run_dir)):
                    return run_dir
            return None

        run_dir = wait_until(started, 300, f"the {step} step")
        time.sleep(delay)
        (pid,) = _qemu_of(run_dir)
        os.kill(pid, signal.SIGKILL)
        output, _ = lab.communicate(timeout=300)
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(30)
    assert lab.returncode == 1, output
    assert not (run_dir / "swap.raw.lab-lock").exists(), "the disk's lab lock leaves no file behind"
    return run_dir, output


def test_qemu_that_dies_outside_a_power_off_is_vmm_crash_in_every_report(tmp_path: Path, default_image) -> None:
    run_dir, output = _run_and_kill_qemu(tmp_path, OUTSIDE_A_POWER_OFF, "run", 2.0)
    result = json.loads((run_dir / "result.json").read_text())
    (fault,) = result["observations"]["vmm_faults"]
    assert (fault["boot"], fault["kind"], fault["detail"]) == ("boot1", "vmm-crash", "QEMU killed by SIGKILL")
    assert fault["step"].startswith("run ") and fault["step_line"] == 5
    assert result["verdict"]["reason"].startswith("boot1: vmm-crash: QEMU killed by SIGKILL during `run ")
    assert any(c["name"] == "boot1 QEMU ran" and not c["passed"] and c["detail"].startswith("vmm-crash during `run ")
               for c in result["verdict"]["checks"])
    assert "boot1: QEMU failed, classified vmm-crash during `run " in output
    assert "vmm-crash during `run " in (run_dir / "junit.xml").read_text()
    assert "vmm-crash during `run " in (run_dir / "report.html").read_text()
    (check,) = [e for e in _events(run_dir) if e["kind"] == "step-end" and e["step"] == "check"]
    assert (check["status"], check["error"]) == ("not-run", "not run: QEMU failed in an earlier step")


def test_steps_after_a_power_off_qemu_did_not_survive_are_not_run(tmp_path: Path, default_image) -> None:
    run_dir, output = _run_and_kill_qemu(tmp_path, IN_A_POWER_OFF, "hibernate", 1.0)
    result = json.loads((run_dir / "result.json").read_text())
    (power_off,) = result["verdict"]["power_offs"]
    assert power_off["class"] == "vmm-crash"
    assert [b["boot"] for b in result["observations"]["boots"]] == ["boot1"], "no second QEMU was started"
    assert not (run_dir / "qemu-boot2.cmdline").exists()
    ended = {e["label"]: e for e in _events(run_dir) if e["kind"] == "step-end"}
    reason = "not run: boot1 power-off was vmm-crash in `hibernate expect=hibernate-off2`"
    assert [ended[label]["status"] for label in ("boot expect=resumed", "check evidence=present")] == ["not-run"] * 2
    assert ended["boot expect=resumed"]["error"] == reason
    assert result["verdict"]["reason"].startswith("boot1 power-off was vmm-crash in `hibernate")
    assert reason in output
