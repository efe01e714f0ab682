"""Independent witnesses of one power-off: the VMM (QMP, PSCI calls), the guest console, the disk.

Each witness says what it saw (facts, with the evidence quoted) and which power-off classes
that is consistent with. None of them decides; the verdict weighs them, and where they
disagree the disagreement is reported as a finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab.judge.observations import PowerOffObservation
from lab.judge.off2_contract import Off2Contract
from lab.rundir import describe_exit, read_console_file
from lab.vocabulary import (
    CONSOLE_PATTERNS,
    HIBERNATE_SIGNALLED,
    HIBERNATED,
    PSCI_FEATURES,
    PSCI_SYSTEM_OFF,
    SYSTEM_OFF2_IDS,
    SYSTEM_RESET_IDS,
    ConsoleMark,
    PowerOffClass,
    psci_function_name,
)

CLASSES = tuple(PowerOffClass)
NOT_POWERED_OFF = (PowerOffClass.HANG, PowerOffClass.ABORTED, PowerOffClass.VMM_CRASH, PowerOffClass.VMM_HANG)
"""Classes where the guest never completed a power-off: witnesses of the guest alone cannot tell them apart."""
NO_SHUTDOWN = (PowerOffClass.HANG, PowerOffClass.ABORTED)
"""What QEMU's silence means when QEMU itself was fine: the guest hung, or gave up and ran on."""
SILENT_AFTER_TROUBLE = (PowerOffClass.CRASH, *NO_SHUTDOWN)
"""QEMU's silence when the guest's kernel panicked, oopsed or hit a BUG and then fell silent: a crash
that never reached the VMM (nothing reset the guest), which the lab stopped waiting for."""
POWER_EVENTS = {"SHUTDOWN", "SUSPEND_DISK", "GUEST_PANICKED", "RESET", "POWERDOWN"}
"""QMP events that speak to how the guest went away (STOP/RESUME pairs from gdbstub traps do not)."""
CONSOLE_WITNESS_MARKS = (ConsoleMark.HIBERNATION_ENTRY, ConsoleMark.IMAGE_SAVED, ConsoleMark.POWER_DOWN,
                         ConsoleMark.RESTARTING, ConsoleMark.PANIC, ConsoleMark.OOPS, ConsoleMark.SYSTEMD_HIBERNATE)
"""`systemd_hibernate` says who asked (systemd-sleep, on a system guest); it changes no classification."""


@dataclass
class Witness:
    """One source's account: facts, quoted evidence, and the classes it is consistent with."""

    name: str
    facts: dict[str, Any]
    evidence: list[str]
    consistent_with: tuple[str, ...]
    opinion: bool = True
    explanation: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "facts": self.facts, "evidence": self.evidence,
            "consistent_with": list(self.consistent_with) if self.opinion else None,
            "explanation": self.explanation,
        }


def _function_id(call: dict[str, Any]) -> int:
    value = call.get("function_id", 0)
    return int(value, 16) if isinstance(value, str) else int(value)


def _call_evidence(call: dict[str, Any]) -> str:
    """One logged call as the guest made it and what it got; a call that did not return got nothing."""
    made = f"{call.get('name', hex(_function_id(call)))}({', '.join(str(a) for a in call.get('args', []))})"
    response = call.get("response")
    got = call.get("action") if response is None else f"{call.get('action')} {response}"
    return f"{made} on vCPU {call.get('vcpu')} -> {got}"


def qmp_witness(observation: PowerOffObservation) -> Witness:
    """What QEMU itself reported over QMP, and how the process ended."""
    record = observation.record
    events = record.qmp_events
    shutdowns = [e for e in events if e["event"] == "SHUTDOWN" and e.get("data", {}).get("guest", True)]
    suspend_disk = [e for e in events if e["event"] == "SUSPEND_DISK"]
    panicked = [e for e in events if e["event"] == "GUEST_PANICKED"]
    facts = {
        "shutdown": [e.get("data", {}) for e in shutdowns],
        "suspend_disk": bool(suspend_disk),
        "guest_panicked": bool(panicked),
        "exit_code": record.exit_code,
        "killed_by_lab": record.killed_by_lab,
        "timed_out": observation.timed_out,
    }
    evidence = [f"{e['event']} {e.get('data', {})} at +{e['lab_seconds']:.3f}s"
                for e in events if e["event"] in POWER_EVENTS]
    reasons = {e.get("data", {}).get("reason") for e in shutdowns}
    if not shutdowns and not panicked:
        return _no_shutdown(observation, facts, evidence)
    if panicked or reasons & {"guest-reset", "guest-panic"}:
        return Witness("vmm-qmp", facts, evidence, (PowerOffClass.CRASH,), explanation="the guest reset or panicked")
    contract = Off2Contract.parse(observation.off2_contract)
    facts["off2_contract"] = str(contract)
    if (signal := contract.seen(events)) is not None:
        return Witness("vmm-qmp", facts, evidence, (HIBERNATE_SIGNALLED[observation.power_interface],),
                       explanation=f"{signal['event']} reported a hibernate power-off (contract {contract})")
    if not contract.observable:
        return Witness("vmm-qmp", facts, evidence, (*HIBERNATED, PowerOffClass.POWEROFF),
                       explanation="a guest-requested power-off; this QEMU reports SYSTEM_OFF2 like SYSTEM_OFF")
    why = ("this QEMU's own PSCI refuses SYSTEM_OFF2" if contract.kind == "unsupported"
           else f"nothing reported OFF2 under contract {contract}")
    return Witness("vmm-qmp", facts, evidence, (PowerOffClass.HIBERNATE_OFF, PowerOffClass.POWEROFF),
                   explanation=f"a plain guest power-off: {why}")


def _no_shutdown(observation: PowerOffObservation, facts: dict[str, Any], evidence: list[str]) -> Witness:
    """QEMU reported no shutdown: it died, it was stopped, or the guest never asked (the lab stopped it)."""
    record = observation.record
    facts["vmm_stopped"] = record.vmm_stopped
    if record.vmm_stopped:
        return Witness("vmm-qmp", facts, evidence, (PowerOffClass.VMM_HANG,),
                       explanation="QEMU itself was stopped (SIGSTOP) and ran nothing until the lab killed it")
    if record.exit_code not in (None, 0) and not record.killed_by_lab:
        return Witness("vmm-qmp", facts, evidence, (PowerOffClass.VMM_CRASH,),
                       explanation=f"QEMU {describe_exit(record.exit_code)} without reporting a shutdown")
    if observation.kernel_trouble is not None:
        return Witness("vmm-qmp", facts, evidence, SILENT_AFTER_TROUBLE,
                       explanation="QEMU reported no shutdown; the lab stopped waiting when the console fell "
                                   "silent after kernel trouble")
    return Witness("vmm-qmp", facts, evidence, NO_SHUTDOWN,
                   explanation="QEMU reported no shutdown before the lab stopped waiting")


def psci_witness(observation: PowerOffObservation) -> Witness:
    """The PSCI layer's call log: which power-off call the guest made, and what it was told."""
    if not observation.psci_active:
        return Witness("vmm-psci", {"active": False}, [], CLASSES, opinion=False,
                       explanation="the PSCI layer was not attached (KVM or another VMM answered PSCI)")
    calls = observation.psci_calls
    off2 = [c for c in calls if _function_id(c) in SYSTEM_OFF2_IDS]
    off2_accepted = [c for c in off2 if c.get("action") == "power-off"]
    off2_refused = [c for c in off2 if c.get("action") != "power-off"]
    plain_off = [c for c in calls if _function_id(c) == PSCI_SYSTEM_OFF]
    resets = [c for c in calls if _function_id(c) in SYSTEM_RESET_IDS]
    facts = {
        "active": True,
        "personality": observation.psci_personality,
        "system_off2_calls": off2,
        "system_off2_accepted": len(off2_accepted),
        "system_off2_refused": len(off2_refused),
        "system_off_calls": len(plain_off),
        "system_reset_calls": len(resets),
    }
    evidence = [_call_evidence(c) for c in calls
                if _function_id(c) in SYSTEM_OFF2_IDS | {PSCI_SYSTEM_OFF} | SYSTEM_RESET_IDS]
    if off2_accepted:
        return Witness("vmm-psci", facts, evidence, (PowerOffClass.HIBERNATE_OFF2,),
                       explanation="the guest called SYSTEM_OFF2 and the VM powered off")
    if resets:
        return Witness("vmm-psci", facts, evidence, (PowerOffClass.CRASH,), explanation="the guest asked for a reset")
    if plain_off:
        fallback = " after SYSTEM_OFF2 was refused" if off2_refused else ""
        return Witness("vmm-psci", facts, evidence, (PowerOffClass.HIBERNATE_OFF, PowerOffClass.POWEROFF),
                       explanation=f"the guest powered off with plain SYSTEM_OFF{fallback}")
    return Witness("vmm-psci", facts, evidence, (PowerOffClass.CRASH, *NOT_POWERED_OFF),
                   explanation="no PSCI power-off or reset call reached the VMM")


def host_kvm_witness(observation: PowerOffObservation) -> Witness:
    """The KVM host's own kernel: every HVC the guest made, traced with its function ID (x0)."""
    calls = observation.host_hvc_calls
    if calls is None:
        return Witness("host-kvm", {"traced": False}, [], CLASSES, opinion=False,
                       explanation="no host kernel traced this guest's HVCs (not on KVM)")
    ids = [_function_id(c) for c in calls]
    facts = {"traced": True, "hvc_calls": len(calls),
             "system_off2": sum(i in SYSTEM_OFF2_IDS for i in ids), "system_off": ids.count(PSCI_SYSTEM_OFF),
             "psci_features": ids.count(PSCI_FEATURES),
             "system_reset": sum(i in SYSTEM_RESET_IDS for i in ids)}
    evidence = [f"HVC {c['function_id']} ({psci_function_name(_function_id(c))}) at {c['seconds']:.6f}"
                for c in calls if _function_id(c) in SYSTEM_OFF2_IDS | {PSCI_SYSTEM_OFF} | SYSTEM_RESET_IDS]
    if facts["system_off2"]:
        return Witness("host-kvm", facts, evidence, (PowerOffClass.HIBERNATE_OFF2,),
                       explanation="the host kernel traced the guest's SYSTEM_OFF2 call (kvm_hvc_arm64)")
    if facts["system_reset"]:
        return Witness("host-kvm", facts, evidence, (PowerOffClass.CRASH,), explanation="the guest asked for a reset")
    if facts["system_off"]:
        return Witness("host-kvm", facts, evidence, (PowerOffClass.HIBERNATE_OFF, PowerOffClass.POWEROFF),
                       explanation="the host kernel traced a plain SYSTEM_OFF")
    return Witness("host-kvm", facts, evidence, (PowerOffClass.CRASH, *NOT_POWERED_OFF),
                   explanation="the host kernel traced no PSCI power-off or reset call")


def console_witness(observation: PowerOffObservation) -> Witness:
    """What the guest printed during this boot, read from QEMU's own console log (complete even
    where the lab's reader was not listening)."""
    lines = read_console_file(observation.record.console_log)
    facts: dict[str, Any] = {}
    evidence: list[str] = []
    for mark in CONSOLE_WITNESS_MARKS:
        hits = [line.strip() for line in lines if CONSOLE_PATTERNS[mark].search(line)]
        facts[mark] = bool(hits)
        evidence += hits[:2]
    if facts["panic"] or facts["oops"]:
        return Witness("guest-console", facts, evidence, (PowerOffClass.CRASH,),
                       explanation="the kernel panicked or oopsed")
    if facts["image_saved"] and facts["power_down"]:
        return Witness("guest-console", facts, evidence, HIBERNATED,
                       explanation="the kernel saved a hibernation image and powered down")
    if facts["power_down"]:
        return Witness("guest-console", facts, evidence, (PowerOffClass.POWEROFF,),
                       explanation="the kernel powered down without saving an image")
    if facts["restarting"]:
        return Witness("guest-console", facts, evidence, (PowerOffClass.CRASH,), explanation="the kernel restarted")
    if observation.console == "virtio":
        return _virtio_console_witness(facts, evidence)
    return Witness("guest-console", facts, evidence, (PowerOffClass.CRASH, *NOT_POWERED_OFF),
                   explanation="the console never said the kernel powered down")


def _virtio_console_witness(facts: dict[str, Any], evidence: list[str]) -> Witness:
    """A virtio console is shut down with the other devices, before the kernel prints its power-down
    line: its silence there says nothing, but a saved image is still seen."""
    if facts["image_saved"]:
        return Witness("guest-console", facts, evidence, HIBERNATED,
                       explanation="the kernel saved a hibernation image (a virtio console is gone before "
                                   "the power-down line)")
    return Witness("guest-console", facts, evidence, CLASSES, opinion=False,
                   explanation="no kernel trouble on the console; a virtio console is gone before the "
                               "power-down line, so it cannot say how the guest powered off")


def disk_witness(observation: PowerOffObservation) -> Witness:
    """The swap area's header, read on the host after QEMU exited."""
    header = observation.disk_header
    if header is None:
        return Witness("disk", {"readable": False, "error": observation.disk_error}, [], CLASSES,
                       opinion=False, explanation=f"the swap header could not be read: {observation.disk_error}")
    facts = {"readable": True, **{k: header.get(k) for k in
             ("signature", "image_present", "flags", "flag_names", "hw_sig", "image_offset", "page_size")}}
    evidence = [f"signature {header.get('signature')!r} at page size {header.get('page_size')}"]
    if header.get("image_present"):
        return Witness("disk", facts, evidence, HIBERNATED,
                       explanation="the swap area holds a hibernation image (S1SUSPEND)")
    return Witness("disk", facts, evidence, (PowerOffClass.POWEROFF, PowerOffClass.CRASH, *NOT_POWERED_OFF),
                   explanation="no hibernation image on the swap area")


def collect_witnesses(observation: PowerOffObservation) -> list[Witness]:
    return [qmp_witness(observation), psci_witness(observation), host_kvm_witness(observation),
            console_witness(observation), disk_witness(observation)]
