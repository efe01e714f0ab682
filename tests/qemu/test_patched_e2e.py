"""The lab's own QEMU, built from Debian's source with the SYSTEM_OFF2 series, on real Debian kernels.

With that QEMU no PSCI layer runs: QEMU's own TCG PSCI answers, and the QMP witness alone tells a
hibernation power-off (SUSPEND_DISK, then SHUTDOWN, as x86 reports ACPI S4) from a plain one.
Assertions read what QEMU and the guest left in the run directory, not only the verdict.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pexpect
import pytest

from lab.machine.channels.qmp import QmpChannel
from lab.rundir import RunDirectory
from lab.scenario.model import find_scenario
from lab.scenario.run import RunOptions, RunResult, run_scenario
from tests.support.kernels import kernel_pin

pytestmark = pytest.mark.guest



def _run(tmp_path: Path, scenario: str, **options: object) -> dict:
    run_dir = tmp_path / scenario
    run_scenario(find_scenario(scenario), RunOptions(run_dir=run_dir, **options), [])  # type: ignore[arg-type]
    return json.loads((run_dir / "result.json").read_text())


def _power_events(run_dir: Path, boot: str) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("data", {}).get("reason")) for e in RunDirectory(run_dir).boot(boot).read_qmp()
            if e["event"] in ("SUSPEND_DISK", "SHUTDOWN")]


def _witness(result: dict, name: str, boot: str = "boot1") -> dict:
    power_off = next(p for p in result["verdict"]["power_offs"] if p["boot"] == boot)
    return next(w for w in power_off["witnesses"] if w["name"] == name)


@pytest.fixture(scope="module")
def patched_run(tmp_path_factory: pytest.TempPathFactory, patched_qemu: Path) -> Path:
    """hibernate-resume on the patched QEMU, shared by the tests that read it."""
    base = tmp_path_factory.mktemp("patched")
    _run(base, "hibernate-resume", qemu="patched")
    return base / "hibernate-resume"


def test_hibernate_resume_on_the_patched_qemu_is_off2_seen_in_qmp(patched_run: Path) -> None:
    result = json.loads((patched_run / "result.json").read_text())
    assert result["verdict"]["status"] == "PASS", result["verdict"]["reason"]
    assert result["verdict"]["power_offs"][0]["class"] == "hibernate-off2"
    assert result["environment"]["psci_personality"] is None, "QEMU's own PSCI answered: no layer"
    assert result["environment"]["qemu_build"]["reports_off2"] is True
    assert not (patched_run / "psci-boot1.jsonl").exists()
    assert _power_events(patched_run, "boot1") == [("SUSPEND_DISK", None), ("SHUTDOWN", "guest-shutdown")]
    assert _witness(result, "vmm-qmp")["consistent_with"] == ["hibernate-off2"]
    assert _witness(result, "vmm-psci")["consistent_with"] is None
    assert "psci: PSCIv1.3 detected in firmware." in (patched_run / "console-boot1.log").read_text()


def test_off2_reads_on_qmp_exactly_as_x86_acpi_s4(patched_run: Path, x86_hibernate_resume_run: RunResult) -> None:
    """One hibernation surface for management applications: the same events, with the same data."""
    def power_events(run_dir: Path) -> list[tuple[str, dict]]:
        return [(e["event"], e.get("data", {})) for e in RunDirectory(run_dir).boot("boot1").read_qmp()
                if e["event"] in ("SUSPEND_DISK", "SHUTDOWN")]

    assert x86_hibernate_resume_run.verdict.power_offs[0].kind == "hibernate-s4"
    assert power_events(patched_run) == power_events(x86_hibernate_resume_run.run_dir) == [
        ("SUSPEND_DISK", {}), ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})]


def test_debian_qemu_without_the_layer_is_hibernate_off(tmp_path: Path) -> None:
    result = _run(tmp_path, "hibernate-resume", psci="qemu")
    assert result["verdict"]["power_offs"][0]["class"] == "hibernate-off"
    assert result["environment"]["off2_contract"] == "unsupported"
    assert _power_events(tmp_path / "hibernate-resume", "boot1") == [("SHUTDOWN", "guest-shutdown")]
    assert "refuses SYSTEM_OFF2" in _witness(result, "vmm-qmp")["explanation"]
    assert "psci: PSCIv1.1 detected in firmware." in (tmp_path / "hibernate-resume/console-boot1.log").read_text()


def test_poweroff_on_the_patched_qemu_is_a_poweroff(tmp_path: Path, patched_qemu: Path) -> None:
    result = _run(tmp_path, "poweroff-baseline", qemu=str(patched_qemu))
    assert result["verdict"]["status"] == "PASS", result["verdict"]["reason"]
    assert [p["class"] for p in result["verdict"]["power_offs"]] == ["poweroff"]
    assert _power_events(tmp_path / "poweroff-baseline", "boot1") == [("SHUTDOWN", "guest-shutdown")]


def test_a_kernel_without_off2_on_the_patched_qemu_is_hibernate_off(tmp_path: Path, patched_qemu: Path) -> None:
    """Debian's 6.12 knows PSCI 1.3 but predates the guest side of SYSTEM_OFF2 (6.13)."""
    result = _run(tmp_path, "hibernate-resume", qemu="patched", kernel_deb=kernel_pin("6.12"))
    assert result["environment"]["image"]["kernel_release"].startswith("6.12.")
    assert result["verdict"]["power_offs"][0]["class"] == "hibernate-off"
    assert _power_events(tmp_path / "hibernate-resume", "boot1") == [("SHUTDOWN", "guest-shutdown")]


def test_reproduce_sh_replays_the_off2(patched_run: Path, tmp_path: Path) -> None:
    """The replay runs the same patched QEMU, so a guest hibernated in it powers off with OFF2 again."""
    script = patched_run / "reproduce.sh"
    assert "QEMU's own PSCI answers" in script.read_text()
    replay = pexpect.spawn("bash", [str(script)], cwd=str(tmp_path), encoding="utf-8", codec_errors="replace",
                           timeout=180, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        replay.expect(r"replaying in (\S+) \(QMP socket")
        work = Path(replay.match.group(1))
        replay.expect("lab-init: ready")
        qmp = QmpChannel(work / "qmp.sock", tmp_path / "qmp.jsonl", 0.0)
        qmp.connect(30)
        try:
            replay.sendline("echo disk > /sys/power/state")
            shutdown = qmp.wait_event("SHUTDOWN", 180)
            events = [e["event"] for e in qmp.events if e["event"] in ("SUSPEND_DISK", "SHUTDOWN")]
        finally:
            qmp.close()
        replay.expect(r"reproduce\.sh: boot2")
        assert re.search(r"PM: Image saving done|PM: hibernation: Wrote \d+ kbytes", replay.before)
    finally:
        if replay.isalive():
            os.killpg(replay.pid, signal.SIGKILL)
        replay.close(force=True)
    assert events == ["SUSPEND_DISK", "SHUTDOWN"]
    assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
    leftover = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout
    assert leftover == "", f"the replay left QEMU running: {leftover}"
