"""The system guest on x86_64: `systemctl hibernate` through ACPI S4 on a q35 machine, and the resume
through initramfs-tools, judged from what QEMU and the guest left in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.image.guest_image import GuestImage
from lab.scenario.model import find_scenario
from lab.scenario.run import RunOptions, run_scenario

pytestmark = pytest.mark.guest


def test_system_hibernate_resume_on_x86_64(tmp_path: Path, system_x86_image: GuestImage) -> None:
    result = run_scenario(find_scenario("system-hibernate-resume"),
                          RunOptions(arch="x86_64", run_dir=tmp_path / "run"), [])
    assert result.verdict.passed, result.verdict.reason
    run_dir = result.run_dir
    events = [json.loads(line)["event"] for line in (run_dir / "qmp-boot1.jsonl").read_text().splitlines()]
    assert events.index("SUSPEND_DISK") < events.index("SHUTDOWN"), "ACPI S4: SUSPEND_DISK, then SHUTDOWN"
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["environment"]["image"]["name"] == "debian-amd64-system"
    assert "console=ttyS0" in summary["environment"]["kernel_append"]
    resumed = (run_dir / "console-boot2.log").read_text(errors="replace")
    assert "Running /scripts/local-premount" in resumed and "PM: hibernation: hibernation exit" in resumed
