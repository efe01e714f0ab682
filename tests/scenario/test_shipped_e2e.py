"""Every shipped scenario, end to end on the default image under TCG, plus negative controls.

Assertions read what the guest and QEMU left in the run directory (console logs, the PSCI
call log, QMP events, the disk), not only the lab's own verdict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lab.scenario.model import Scenario, load_scenario, shipped_scenarios
from lab.scenario.run import RunOptions, RunResult, run_scenario
from lab.vocabulary import CONSOLE_PATTERNS, ConsoleMark, ImageOn

pytestmark = pytest.mark.guest


def _run(scenario: Scenario, tmp_path: Path) -> RunResult:
    return run_scenario(scenario, RunOptions(run_dir=tmp_path / "run"), [])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _off2_calls(run_dir: Path, boot: str) -> list[dict]:
    calls = _jsonl(run_dir / f"psci-{boot}.jsonl")
    return [c for c in calls if c["name"].startswith("SYSTEM_OFF2")]


def _console(run_dir: Path, boot: str) -> str:
    return (run_dir / f"console-{boot}.log").read_text(errors="replace")


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda path: path.stem)
def test_shipped_scenario_passes(path: Path, tmp_path: Path, default_image, request: pytest.FixtureRequest) -> None:
    scenario = load_scenario(path)
    if scenario.system:
        request.getfixturevalue("system_dracut_image" if scenario.image == "debian-arm64-system-dracut"
                                else "system_image")
    result = _run(scenario, tmp_path)
    assert result.verdict.passed, result.verdict.reason
    run_dir = result.run_dir
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["verdict"]["status"] == "PASS"
    for power_off in summary["verdict"]["power_offs"]:
        boot, kind = power_off["boot"], power_off["class"]
        assert power_off["disagreements"] == [], "every witness agrees on a shipped scenario"
        shutdowns = [e for e in _jsonl(run_dir / f"qmp-{boot}.jsonl") if e["event"] == "SHUTDOWN"]
        assert shutdowns and shutdowns[0]["data"]["guest"] is True
        accepted = [c for c in _off2_calls(run_dir, boot) if c["action"] == "power-off"]
        if kind == "hibernate-off2":
            assert [c["args"][:2] for c in accepted] == [["0x0", "0x0"]], "the guest called SYSTEM_OFF2(0, 0)"
        else:
            assert accepted == []
        if kind.startswith("hibernate"):
            assert "PM: Image saving done" in _console(run_dir, boot)
    for boot in summary["observations"]["boots"]:
        resumed = "PM: hibernation: hibernation exit" in _console(run_dir, boot["boot"])
        assert resumed == (boot["outcome"] == "resumed")
    GUEST_FACTS.get(path.stem, lambda run_dir: None)(run_dir)


def _guest_saw_psci_1_3(run_dir: Path) -> None:
    assert "psci: PSCIv1.3 detected in firmware." in _console(run_dir, "boot1")


def _guest_was_refused_then_fell_back(run_dir: Path) -> None:
    calls = _jsonl(run_dir / "psci-boot1.jsonl")
    refused = [c for c in calls if c["name"].startswith("SYSTEM_OFF2") and c["response"] == -2]
    assert refused, "the guest's SYSTEM_OFF2(0, 0) was answered INVALID_PARAMS"
    assert calls.index(refused[0]) < max(i for i, c in enumerate(calls) if c["name"] == "SYSTEM_OFF")


def _guest_saw_psci_1_1(run_dir: Path) -> None:
    assert "psci: PSCIv1.1 detected in firmware." in _console(run_dir, "boot1")


def _both_commands_went_over_ssh_through_new_forwards(run_dir: Path) -> None:
    summary = json.loads((run_dir / "result.json").read_text())
    commands = summary["observations"]["commands"]
    assert [(c["boot"], c["channel"], c["status"]) for c in commands] == [("boot1", "ssh", 0), ("boot2", "ssh", 0)]
    planted = next(p for p in summary["phases"] if p["step"] == "mark")["outcome"]
    assert planted["boot_id"] in commands[0]["output"]
    assert planted["token"] in commands[1]["output"], "the resumed guest answered over SSH with its RAM intact"
    ports = {boot: re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22", (run_dir / f"qemu-{boot}.cmdline").read_text())
             for boot in ("boot1", "boot2")}
    assert all(ports.values()), "port 22 forwarded from 127.0.0.1 only"


def _system_resumed_through_systemd_and_its_initramfs(run_dir: Path) -> None:
    """systemd hibernated it, initramfs-tools' local-premount handed the image to the kernel, and the
    kernel's command line named the swap partition, not the busybox guests' whole disk."""
    summary = json.loads((run_dir / "result.json").read_text())
    cmdline = summary["environment"]["kernel_append"]
    assert "lab.swap=partition" in cmdline and "resume=PARTUUID=" in cmdline
    assert CONSOLE_PATTERNS[ConsoleMark.SYSTEMD_HIBERNATE].search(_console(run_dir, "boot1"))
    resumed = _console(run_dir, "boot2")
    assert "Running /scripts/local-premount" in resumed
    assert "PM: hibernation: resume from hibernation" in resumed
    assert CONSOLE_PATTERNS[ConsoleMark.SYSTEMD_RETURNED].search(resumed)
    [power_off] = summary["observations"]["power_offs"]
    assert power_off["disk_header"]["image_present"] is True
    assert power_off["disk_header"]["swap"]["label"] == "lab-swap"
    _both_commands_went_over_ssh_through_new_forwards(run_dir)


def _system_resumed_from_its_swap_file(run_dir: Path) -> None:
    """The image went into /swapfile: found through resume_offset, its header read at that block."""
    summary = json.loads((run_dir / "result.json").read_text())
    area = summary["environment"]["swap_area"]
    assert area["image_on"] == "file"
    offset = next(a for a in area["resume_arguments"] if a.startswith("resume_offset="))
    assert offset in summary["environment"]["kernel_append"]
    assert "lab-system: swap on /swapfile" in _console(run_dir, "boot1")
    [power_off] = summary["observations"]["power_offs"]
    assert power_off["disk_header"]["image_present"] is True
    assert power_off["disk_header"]["swap"]["label"] == "lab-swapfile"


def _kernel_timed_its_phases(run_dir: Path) -> None:
    _guest_saw_psci_1_3(run_dir)
    phases = json.loads((run_dir / "result.json").read_text())["observations"]["kernel_phases"]
    written = [p for p in phases["boots"]["boot1"]["phases"] if p["kind"] == "image-write"]
    assert written and written[0]["kbytes"] > 0 and written[0]["mb_per_s"] > 0
    resumed = [p["kind"] for p in phases["boots"]["boot2"]["phases"]]
    assert resumed.index("image-read") < resumed.index("restore") < resumed.index("thaw")
    assert phases["summary"]["image write"]["mb_per_s"]["count"] == 1
    assert ">kernel PM</text>" in (run_dir / "report.html").read_text(), "the timeline has the kernel's lane"


def _every_cycle_was_recorded_with_its_delay_and_phases(run_dir: Path) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    cycles = result["observations"]["cycles"]
    assert [c["awake_seconds"] for c in cycles] == [0, 2, 4, 6, 8]
    assert all(c["passed"] and len(c["boots"]) == 1 for c in cycles)
    resumed = {c["boots"][0] for c in cycles}
    phases = result["observations"]["kernel_phases"]
    assert resumed <= set(phases["boots"])
    spread = phases["summary"]["image write"]["seconds"]
    assert spread["count"] == 5 and spread["min"] <= spread["median"] <= spread["max"]


GUEST_FACTS = {
    "system-hibernate-resume": _system_resumed_through_systemd_and_its_initramfs,
    "system-swapfile-resume": _system_resumed_from_its_swap_file,
    "ssh-hibernate-resume": _both_commands_went_over_ssh_through_new_forwards,
    "hibernate-resume": _kernel_timed_its_phases,
    "hibernate-endurance": _every_cycle_was_recorded_with_its_delay_and_phases,
    "psci-reject-zero-type": _guest_was_refused_then_fell_back,
    "psci-none": _guest_saw_psci_1_1,
}
"""What the guest itself must show in particular scenarios, beyond what every scenario shows."""


def _with_steps(path: str, tmp_path: Path, edit) -> Scenario:
    """A copy of a shipped scenario with its steps edited: a broken guarantee must fail."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    data["steps"] = edit(data["steps"])
    copy = tmp_path / Path(path).name
    copy.write_text(yaml.safe_dump(data))
    return load_scenario(copy)


def test_negative_control_discarded_image_loses_the_evidence(tmp_path, default_image) -> None:
    scenario = _with_steps("scenarios/hibernate-resume.yaml", tmp_path,
                           lambda steps: [*steps[:3], {"discard-image": {}}, *steps[3:]])
    result = _run(scenario, tmp_path)
    assert not result.verdict.passed
    evidence = [c for c in result.verdict.checks if c.name.startswith("evidence present")]
    assert evidence and "token absent" in evidence[0].detail
    assert "PM: hibernation: hibernation exit" not in _console(result.run_dir, "boot2")


def test_negative_control_coldboot_without_new_signature_fails_because_it_resumed(tmp_path, default_image) -> None:
    scenario = _with_steps("scenarios/hibernate-coldboot-altered-signature.yaml", tmp_path,
                           lambda steps: [s for s in steps if "alter-signature" not in s])
    result = _run(scenario, tmp_path)
    assert not result.verdict.passed
    assert "came up resumed, expected fresh" in result.verdict.reason


def test_negative_control_hibernation_is_not_taken_for_a_poweroff(tmp_path, default_image) -> None:
    scenario = _with_steps("scenarios/poweroff-baseline.yaml", tmp_path,
                           lambda steps: [{"hibernate": {"expect": "poweroff"}} if "poweroff" in s else s
                                          for s in steps])
    result = _run(scenario, tmp_path)
    assert not result.verdict.passed
    assert "hibernate ended as hibernate-off2, expected poweroff" in result.verdict.reason


def test_negative_control_a_stale_image_left_armed_is_resumed_and_fails(tmp_path, default_image) -> None:
    rearm = {"run": {"command": "swapoff /dev/vda && printf 'S1SUSPEND\\000' | "
                                "dd of=/dev/vda bs=1 seek=4086 conv=notrunc,fsync"}}

    def leave_image_armed(steps: list) -> list:
        crash = next(i for i, s in enumerate(steps) if "crash" in s)
        return [*steps[:crash], rearm, *steps[crash:]]

    result = _run(_with_steps("scenarios/no-stale-resume.yaml", tmp_path, leave_image_armed), tmp_path)
    assert not result.verdict.passed
    assert "boot3 came up resumed, expected fresh" in result.verdict.reason
    assert "PM: hibernation: hibernation exit" in _console(result.run_dir, "boot3")


def test_negative_control_a_stale_resume_offset_is_image_not_found(tmp_path, system_image) -> None:
    """The bug report's shape: the running system knows where its swap file is, the boot loader's command line
    does not. With the stale `resume_offset=` alone, logind refuses `systemctl hibernate` (the resume device
    is "not an active swap device"), so the run first writes the right offset into /sys/power, as a tool
    that fixes the running system would. The image is written; the resuming kernel looks where the command
    line says, finds no image, and the system boots afresh."""
    right = next(a for a in system_image.swap_area(ImageOn.FILE).resume_arguments if a.startswith("resume_offset="))
    fix_running_system = {"run": {"command": f"echo {right.split('=')[1]} > /sys/power/resume_offset"}}
    scenario = _with_steps("scenarios/system-swapfile-resume.yaml", tmp_path,
                           lambda steps: [steps[0], fix_running_system, *steps[1:4]])
    result = run_scenario(scenario, RunOptions(run_dir=tmp_path / "run", append="resume_offset=1"), [])
    assert not result.verdict.passed
    assert result.verdict.reason.startswith("boot2: image not found [high]: "), "the verdict leads with the finding"
    assert "boot2 came up fresh, expected resumed" in result.verdict.reason
    summary = json.loads((result.run_dir / "result.json").read_text())
    [power_off] = summary["observations"]["power_offs"]
    assert power_off["disk_header"]["image_present"] is True, "the image was written where the swap file is"
    assert summary["environment"]["kernel_append"].split()[-1] == "resume_offset=1", "the user's --append is last"
    not_found = [f for f in result.verdict.findings if f.label == "image not found"]
    assert [f.boot for f in not_found] == ["boot2"], result.verdict.findings
    assert re.search(r"Image not found \(code -22\)", not_found[0].line)


@pytest.mark.parametrize("name", ["hibernate-resume", "hibernate-coldboot-altered-signature", "ssh-hibernate-resume"])
def test_x86_64_acpi_s4_is_the_counterpart_of_off2(name, tmp_path, default_x86_image, request) -> None:
    result = request.getfixturevalue("x86_hibernate_resume_run") if name == "hibernate-resume" else \
        run_scenario(load_scenario(Path(f"scenarios/{name}.yaml")), RunOptions(arch="x86_64", run_dir=tmp_path / "run"),
                     [])
    assert result.verdict.passed, result.verdict.reason
    events = [e["event"] for e in _jsonl(result.run_dir / "qmp-boot1.jsonl") if e["event"] not in ("STOP", "RESUME")]
    assert events[-2:] == ["SUSPEND_DISK", "SHUTDOWN"], "QEMU reported ACPI S4 before the power-off"
    assert "ACPI: PM: Preparing to enter system sleep state S4" in _console(result.run_dir, "boot1")
    assert not (result.run_dir / "psci-boot1.jsonl").exists(), "no PSCI layer on x86"
    assert result.verdict.power_offs[0].kind == "hibernate-s4"
    if name == "ssh-hibernate-resume":
        _both_commands_went_over_ssh_through_new_forwards(result.run_dir)
