"""Classification of power-offs from witnesses, and how expectations become checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.judge.observations import BootObservation, KernelTroubleObservation, Observations, PowerOffObservation
from lab.judge.off2_contract import Off2Contract
from lab.judge.verdict import QEMU_DROPS_OFF2, CheckKind, classify, judge
from lab.rundir import BootRecord
from lab.vocabulary import BootKind, Intent, PowerInterface

HIBERNATE_CONSOLE = """\
[    4.09] PM: hibernation: hibernation entry
[    7.72] PM: Image saving done
[    7.86] reboot: Power down
"""
SHUTDOWN = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}, "lab_seconds": 8.0}
OFF2 = {"function_id": "0xc4000015", "name": "SYSTEM_OFF2_64", "args": ["0x0", "0x0", "0x0"],
        "vcpu": 0, "action": "power-off", "response": None}
OFF2_REFUSED = {**OFF2, "action": "return", "response": -2}
SYSTEM_OFF = {"function_id": "0x84000008", "name": "SYSTEM_OFF", "args": ["0x0", "0x0", "0x0"],
              "vcpu": 0, "action": "pass-through", "response": None}
IMAGE = {"signature": "S1SUSPEND", "image_present": True, "page_size": 4096}
NO_IMAGE = {"signature": "SWAPSPACE2", "image_present": False, "page_size": 4096}


def observation(tmp_path: Path, console: str, events: list, calls: list | None, header: dict | None,
                intent: str = "hibernate", timed_out: bool = False, expect: str | None = None,
                contract: str = "none"):
    log = tmp_path / "console-boot1.log"
    log.write_text(console)
    record = BootRecord("boot1", ["qemu"], log, tmp_path / "qmp.jsonl", 0.0, exit_code=0, qmp_events=events)
    return PowerOffObservation(
        boot="boot1", intent=Intent(intent), expect=expect, step_line=3, record=record, timed_out=timed_out,
        psci_active=calls is not None, psci_personality="kvm" if calls is not None else None,
        psci_calls=calls or [], disk_header=header, off2_contract=contract,
    )


def test_off2_seen_by_the_psci_layer_is_hibernate_off2(tmp_path):
    verdict = classify(observation(tmp_path, HIBERNATE_CONSOLE, [SHUTDOWN], [OFF2], IMAGE))
    assert verdict.kind == "hibernate-off2"
    assert verdict.disagreements == []


def test_refused_off2_then_system_off_is_hibernate_off_with_the_fallback_explained(tmp_path):
    verdict = classify(observation(tmp_path, HIBERNATE_CONSOLE, [SHUTDOWN], [OFF2_REFUSED, SYSTEM_OFF], IMAGE))
    assert verdict.kind == "hibernate-off"
    psci = next(w for w in verdict.witnesses if w.name == "vmm-psci")
    assert psci.facts["system_off2_refused"] == 1
    assert "after SYSTEM_OFF2 was refused" in psci.explanation
    assert psci.evidence == ["SYSTEM_OFF2_64(0x0, 0x0, 0x0) on vCPU 0 -> return -2",
                             "SYSTEM_OFF(0x0, 0x0, 0x0) on vCPU 0 -> pass-through"]


def test_plain_poweroff_is_never_a_hibernation(tmp_path):
    console = "[ 1.0] reboot: Power down\n"
    verdict = classify(observation(tmp_path, console, [SHUTDOWN], [SYSTEM_OFF], NO_IMAGE, intent="poweroff"))
    assert verdict.kind == "poweroff"
    assert verdict.disagreements == []


def test_panic_is_a_crash(tmp_path):
    console = "[ 3.0] Kernel panic - not syncing: sysrq triggered crash\n"
    reset = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-reset"}, "lab_seconds": 3.0}
    assert classify(observation(tmp_path, console, [reset], [], NO_IMAGE, intent="crash")).kind == "crash"


def test_no_shutdown_before_the_deadline_is_a_hang(tmp_path):
    verdict = classify(observation(tmp_path, "[ 4.0] PM: hibernation: hibernation entry\n", [], [], NO_IMAGE,
                                   timed_out=True))
    assert verdict.kind == "hang"


def test_image_on_disk_without_the_console_saying_so_is_a_reported_disagreement(tmp_path):
    verdict = classify(observation(tmp_path, "[ 7.8] reboot: Power down\n", [SHUTDOWN], [OFF2], IMAGE))
    assert verdict.kind == "hibernate-off2"
    assert any(d.startswith("guest-console is not consistent") for d in verdict.disagreements)


def test_suspend_disk_from_an_off2_aware_qemu_counts_without_the_layer(tmp_path):
    suspend = {"event": "SUSPEND_DISK", "data": {}, "lab_seconds": 7.9}
    verdict = classify(observation(tmp_path, HIBERNATE_CONSOLE, [suspend, SHUTDOWN], None, IMAGE,
                                   contract="suspend-disk"))
    assert verdict.kind == "hibernate-off2"
    assert verdict.off2_observable and verdict.disagreements == []


def test_acpi_s4_on_an_x86_guest_is_hibernate_s4_and_meets_a_hibernate_off2_expectation(tmp_path):
    """A scenario for both arches says `hibernate-off2`; an x86 guest meets it with ACPI S4, classed as such."""
    suspend = {"event": "SUSPEND_DISK", "data": {}, "lab_seconds": 7.9}
    acpi = dataclasses.replace(observation(tmp_path, HIBERNATE_CONSOLE, [suspend, SHUTDOWN], None, IMAGE,
                                           expect="hibernate-off2", contract="suspend-disk"),
                               power_interface=PowerInterface.ACPI)
    verdict = judge(Observations(power_offs=[acpi]), {"boot1": HIBERNATE_CONSOLE.splitlines()}, None)
    assert verdict.power_offs[0].kind == "hibernate-s4" and verdict.power_offs[0].disagreements == []
    assert verdict.passed, verdict.reason
    plain = dataclasses.replace(acpi, record=dataclasses.replace(acpi.record, qmp_events=[SHUTDOWN]))
    failed = judge(Observations(power_offs=[plain]), {"boot1": HIBERNATE_CONSOLE.splitlines()}, None)
    assert failed.reason.startswith("boot1 power-off: hibernate ended as hibernate-off, expected hibernate-s4")


def test_off2_aware_qemu_without_its_signal_saw_a_plain_system_off(tmp_path):
    verdict = classify(observation(tmp_path, HIBERNATE_CONSOLE, [SHUTDOWN], None, IMAGE, contract="suspend-disk"))
    assert verdict.kind == "hibernate-off"


@pytest.mark.parametrize(
    ("contract", "events"),
    [
        ("event:GUEST_HIBERNATED", [{"event": "GUEST_HIBERNATED", "data": {}, "lab_seconds": 7.9}, SHUTDOWN]),
        ("shutdown-reason:guest-hibernate",
         [{"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-hibernate"}, "lab_seconds": 8.0}]),
    ],
)
def test_labs_name_how_their_qemu_reports_off2(tmp_path, contract, events):
    assert classify(observation(tmp_path, HIBERNATE_CONSOLE, events, None, IMAGE, contract=contract)).kind == (
        "hibernate-off2"
    )


def test_stock_qemu_without_the_layer_says_off2_is_not_observable(tmp_path):
    stock = observation(tmp_path, HIBERNATE_CONSOLE, [SHUTDOWN], None, IMAGE, expect="hibernate-off2")
    verdict = classify(stock)
    assert verdict.kind == "hibernate"
    assert not verdict.off2_observable
    run = judge(Observations(power_offs=[stock]), {"boot1": HIBERNATE_CONSOLE.splitlines()}, None)
    assert not run.passed
    assert "hibernate ended as hibernate, expected hibernate-off2; OFF2 not observable with this QEMU" in run.reason
    stock.expect = None
    assert judge(Observations(power_offs=[stock]), {"boot1": HIBERNATE_CONSOLE.splitlines()}, None).passed


def test_unknown_contract_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown OFF2 contract 'event'"):
        Off2Contract.parse("event")


@pytest.mark.parametrize(("expect", "passed"), [("hibernate-off2", True), ("hibernate-off", False)])
def test_run_verdict_holds_power_offs_to_their_expectation(tmp_path, expect, passed):
    observations = Observations(power_offs=[
        observation(tmp_path, HIBERNATE_CONSOLE, [SHUTDOWN], [OFF2], IMAGE, expect=expect)
    ])
    verdict = judge(observations, {"boot1": HIBERNATE_CONSOLE.splitlines()}, None)
    assert verdict.passed is passed
    if not passed:
        assert verdict.reason.startswith("boot1 power-off: hibernate ended as hibernate-off2, expected hibernate-off")
        assert verdict.reason.endswith("(line 3)")


def test_resumed_boot_that_did_not_finish_the_hibernate_command_fails():
    observations = Observations(boots=[BootObservation("boot2", BootKind.RESUMED, "resumed", 5,
                                                       hibernate_command_status=1)])
    verdict = judge(observations, {}, None)
    assert not verdict.passed
    assert "boot2 resumed userspace" in verdict.reason


def test_forbidden_console_words_fail_a_boot_that_was_not_crashed_on_purpose():
    consoles = {"boot1": ["[ 2.0] Unable to handle kernel paging request", "[ 2.0] Call trace:"]}
    verdict = judge(Observations(), consoles, None)
    assert not verdict.passed
    assert verdict.reason.startswith("boot1 console healthy: found: '[ 2.0] Call trace:'")


def test_a_crash_step_is_held_to_crash_and_its_panic_is_not_held_against_it(tmp_path):
    console = "[ 3.0] Kernel panic - not syncing: sysrq triggered crash\n[ 3.0] Call trace:\n"
    reset = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-reset"}, "lab_seconds": 3.0}
    crashed = judge(Observations(power_offs=[observation(tmp_path, console, [reset], [], NO_IMAGE, intent="crash")]),
                    {"boot1": console.splitlines()}, None)
    assert crashed.passed, crashed.reason
    assert not [c for c in crashed.checks if c.name == "boot1 console healthy"]
    hung = judge(Observations(power_offs=[observation(tmp_path, "", [], [], NO_IMAGE, intent="crash",
                                                      timed_out=True)]), {}, None)
    assert not hung.passed
    assert "crash ended as hang, expected crash" in hung.reason


def test_an_aborted_run_fails_with_its_reason():
    verdict = judge(Observations(), {}, "timed out after 1.0s waiting for boot1 to become ready")
    assert not verdict.passed
    assert verdict.reason.startswith("timed out")


def test_an_aborted_run_leads_with_the_kernel_trouble_that_explains_it():
    consoles = {"boot2": ["[ 5.1] Internal error: Oops: 0000000096000006 [#1] SMP"]}
    verdict = judge(Observations(), consoles, "timed out after 120.0s waiting for boot2 to become ready")
    assert verdict.reason == (
        "boot2: kernel trouble (found: '[ 5.1] Internal error: Oops: 0000000096000006 [#1] SMP'); "
        "timed out after 120.0s waiting for boot2 to become ready"
    )
    sick = next(check for check in verdict.checks if not check.passed)
    assert (sick.kind, sick.boot) == (CheckKind.CONSOLE_HEALTHY, "boot2")
    assert sick.to_json()["kind"] == "console-healthy" and sick.to_json()["boot"] == "boot2"


def kvm_observation(tmp_path: Path, console: str, hvc_ids: list[str], header: dict, contract: str = "none",
                    intent: str = "hibernate") -> PowerOffObservation:
    """A guest on KVM with stock QEMU: no PSCI layer, a virtio console, the host kernel's HVC trace."""
    base = observation(tmp_path, console, [SHUTDOWN], None, header, intent=intent, contract=contract)
    calls = [{"function_id": f, "seconds": 10.0 + i} for i, f in enumerate(hvc_ids)]
    return dataclasses.replace(base, host_hvc_calls=calls, console="virtio")


VIRTIO_HIBERNATE_CONSOLE = "[    4.09] PM: hibernation: hibernation entry\n[    7.72] PM: Image saving done\n"


def test_on_kvm_with_stock_qemu_the_host_trace_tells_off2_and_the_note_says_qemu_drops_it(tmp_path):
    verdict = classify(kvm_observation(tmp_path, VIRTIO_HIBERNATE_CONSOLE, ["0x84000000", "0xc4000015"], IMAGE))
    assert verdict.kind == "hibernate-off2"
    assert verdict.disagreements == []
    assert QEMU_DROPS_OFF2 in verdict.notes
    host = next(w for w in verdict.witnesses if w.name == "host-kvm")
    assert host.facts["system_off2"] == 1 and "SYSTEM_OFF2" in host.evidence[0]


def test_on_a_host_kernel_without_off2_the_trace_shows_system_off_and_the_class_is_hibernate_off(tmp_path):
    verdict = classify(kvm_observation(tmp_path, VIRTIO_HIBERNATE_CONSOLE, ["0x8400000a", "0x84000008"], IMAGE))
    assert verdict.kind == "hibernate-off"
    assert verdict.disagreements == []
    assert QEMU_DROPS_OFF2 not in verdict.notes, "the trace shows no SYSTEM_OFF2 for QEMU to drop"
    assert any(note.startswith("the host kernel's kvm_hvc_arm64 trace shows a plain SYSTEM_OFF (0x84000008), after "
                               "PSCI_FEATURES and no SYSTEM_OFF2") for note in verdict.notes), verdict.notes


def test_a_patched_qemu_on_kvm_agrees_with_the_trace_and_drops_the_note(tmp_path):
    suspend = {"event": "SUSPEND_DISK", "data": {}, "lab_seconds": 7.9}
    hibernate = {**SHUTDOWN, "data": {"guest": True, "reason": "guest-hibernate"}}
    base = kvm_observation(tmp_path, VIRTIO_HIBERNATE_CONSOLE, ["0xc4000015"], IMAGE,
                           contract="shutdown-reason:guest-hibernate")
    verdict = classify(dataclasses.replace(base, record=dataclasses.replace(
        base.record, qmp_events=[suspend, hibernate])))
    assert verdict.kind == "hibernate-off2"
    assert verdict.disagreements == [] and QEMU_DROPS_OFF2 not in verdict.notes


def test_a_virtio_console_silent_at_power_down_is_no_disagreement_but_a_uart_one_is(tmp_path):
    on_kvm = classify(kvm_observation(tmp_path, "[ 1.0] poweroff\n", ["0x84000008"], NO_IMAGE, intent="poweroff"))
    assert on_kvm.kind == "poweroff" and on_kvm.disagreements == []
    console = next(w for w in on_kvm.witnesses if w.name == "guest-console")
    assert not console.opinion
    on_uart = classify(observation(tmp_path, "[ 1.0] poweroff\n", [SHUTDOWN], [SYSTEM_OFF], NO_IMAGE,
                                   intent="poweroff"))
    assert any(d.startswith("guest-console") for d in on_uart.disagreements)


def test_the_labs_own_quit_after_a_timeout_is_no_guest_power_off(tmp_path):
    quit_ = {"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}, "lab_seconds": 190.0}
    verdict = classify(observation(tmp_path, "[ 4.0] PM: hibernation: hibernation entry\n", [quit_], [], NO_IMAGE,
                                   timed_out=True))
    assert verdict.kind == "hang"


OOPS = "[   19.123232] Internal error: Oops: 0000000096000006 [#1] SMP"


def test_a_power_off_that_ended_in_kernel_trouble_and_silence_is_a_crash_not_a_hang(tmp_path):
    console = f"[ 4.0] PM: hibernation: hibernation entry\n{OOPS}\n[   19.123232] Call trace:\n"
    quit_ = {"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}, "lab_seconds": 30.0}
    hung = dataclasses.replace(observation(tmp_path, console, [quit_], [], NO_IMAGE, timed_out=True,
                                           expect="hibernate-off2"), kernel_trouble=OOPS)
    verdict = classify(hung)
    assert verdict.kind == "crash"
    assert not [d for d in verdict.disagreements if d.startswith("vmm-qmp")]
    qmp = next(w for w in verdict.witnesses if w.name == "vmm-qmp")
    assert "after kernel trouble" in qmp.explanation
    judged = judge(Observations(power_offs=[hung]), {"boot1": console.splitlines()}, None)
    assert not judged.passed
    assert judged.reason.startswith("boot1 power-off: hibernate ended as crash, expected hibernate-off2; "
                                    f"kernel trouble, then silence: {OOPS!r}")


def test_a_run_stopped_by_kernel_trouble_says_so_not_timed_out():
    trouble = KernelTroubleObservation(
        step_line=11, step="boot expect=resumed", boot="boot2", line=OOPS,
        waiting_for="boot2 to become ready", quiet_seconds=5.0, seen_at=70.3, stopped_at=75.4)
    error = f"kernel trouble while waiting for boot2 to become ready: {OOPS!r}, then 5s of silence"
    verdict = judge(Observations(kernel_troubles=[trouble]), {"boot2": [OOPS]}, error)
    assert not verdict.passed and verdict.status == "FAIL"
    assert verdict.reason == (f"boot2: kernel trouble: {OOPS!r}, then 5s of silence while waiting for "
                              "boot2 to become ready (`boot expect=resumed`, line 11)")
    assert "timed out" not in verdict.reason
    assert [c.name for c in verdict.checks if not c.passed] == ["boot2 console healthy"]
