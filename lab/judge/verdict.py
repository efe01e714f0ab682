"""The verdict: classify each power-off from its witnesses, then hold the run to its expectations.

Classification follows what can least be faked: a VMM that never saw a shutdown is a hang,
unless the guest's kernel panicked, oopsed or hit a BUG and fell silent (a crash); a panic or
reset is a crash; an image written (disk or console) is a hibernation, with
SYSTEM_OFF2 only when a VMM-side witness saw it; anything else is a plain power-off.
Witnesses inconsistent with the class are reported as disagreements.
"""

from __future__ import annotations

import re
from dataclasses import KW_ONLY, dataclass, field
from enum import StrEnum
from typing import Any

from lab.judge.catalogue import Entry, Finding, catalogue, match_consoles
from lab.judge.kernel_phases import parse_kernel_phases
from lab.judge.observations import Observations, PowerOffObservation, VmmFaultObservation
from lab.judge.off2_contract import Off2Contract
from lab.judge.witnesses import NO_SHUTDOWN, SILENT_AFTER_TROUBLE, Witness, collect_witnesses
from lab.vocabulary import HIBERNATE_SIGNALLED, HIBERNATED, KERNEL_TROUBLE, BootKind, Intent, PowerOffClass, RunStatus

QEMU_DROPS_OFF2 = ("QEMU drops OFF2: the host kernel's kvm_hvc_arm64 trace shows the guest's SYSTEM_OFF2, which "
                   "this QEMU build reports like SYSTEM_OFF")
HOST_SAW_PLAIN_OFF = ("the host kernel's kvm_hvc_arm64 trace shows a plain SYSTEM_OFF (0x84000008){after} and no "
                      "SYSTEM_OFF2: the guest fell back, as it does when the host's KVM does not offer SYSTEM_OFF2")
NOT_OBSERVABLE = ("OFF2 not observable with this QEMU: it reports SYSTEM_OFF2 like SYSTEM_OFF and no PSCI layer "
                  "ran; the hibernation itself is judged from the console and the disk")


@dataclass(kw_only=True)
class PowerOffVerdict:
    boot: str
    intent: Intent
    kind: PowerOffClass
    witnesses: list[Witness]
    off2_observable: bool
    notes: list[str] = field(default_factory=list)

    @property
    def disagreements(self) -> list[str]:
        """Each witness whose account does not fit the class, and why."""
        return [f"{w.name} is not consistent with {self.kind}: {w.explanation}"
                for w in self.witnesses if w.opinion and self.kind not in w.consistent_with]

    def to_json(self) -> dict[str, Any]:
        return {
            "boot": self.boot, "intent": self.intent, "class": self.kind,
            "off2_observable": self.off2_observable,
            "notes": self.notes,
            "disagreements": self.disagreements,
            "witnesses": [w.to_json() for w in self.witnesses],
        }


class CheckKind(StrEnum):
    """What a check holds the run to; its name says the same in words, for people."""

    POWER_OFF = "power-off"
    CAME_UP = "came-up"
    RESUMED_USERSPACE = "resumed-userspace"
    EVIDENCE = "evidence"
    BOOT_ID = "boot-id"
    SWAP_SIGNATURE = "swap-signature"
    CONSOLE_SHOWS = "console-shows"
    CONSOLE_NEVER_SHOWS = "console-never-shows"
    COMMAND = "command"
    CONSOLE_HEALTHY = "console-healthy"
    QEMU_RAN = "qemu-ran"


@dataclass
class Check:
    """One expectation and whether the run met it: `kind` and `boot` say which, `name` says it in words."""

    name: str
    passed: bool
    detail: str
    line: int = 0
    _: KW_ONLY
    kind: CheckKind
    boot: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "boot": self.boot, "passed": self.passed,
                "detail": self.detail, "line": self.line}


@dataclass
class RunVerdict:
    passed: bool
    reason: str
    power_offs: list[PowerOffVerdict] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    set_up_failed: bool = False
    """Nothing was judged: the lab could not set the run up (its reason says what was missing)."""
    lab_fault: bool = False
    """The run was stopped by the lab or its infrastructure (a host lost, a full disk), not by the guest."""
    findings: list[Finding] = field(default_factory=list)
    """Catalogue entries that matched the boots' kernel lines, most severe first."""
    vmm_faults: list[VmmFaultObservation] = field(default_factory=list)
    """QEMU's own failures outside a power-off, each with its class (also a failed check)."""

    @property
    def status(self) -> RunStatus:
        if self.passed:
            return RunStatus.PASS
        return RunStatus.ERROR if self.set_up_failed or self.lab_fault else RunStatus.FAIL

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "power_offs": [p.to_json() for p in self.power_offs],
            "checks": [c.to_json() for c in self.checks],
            "findings": [f.to_json() for f in self.findings],
        }


def _by_name(witnesses: list[Witness]) -> dict[str, Witness]:
    return {w.name: w for w in witnesses}


def classify(observation: PowerOffObservation) -> PowerOffVerdict:
    witnesses = collect_witnesses(observation)
    seen = _by_name(witnesses)
    qmp, console, disk = seen["vmm-qmp"], seen["guest-console"], seen["disk"]
    vmm_side = [seen["vmm-qmp"], seen["vmm-psci"], seen["host-kvm"]]
    contract = Off2Contract.parse(observation.off2_contract)
    signalled = HIBERNATE_SIGNALLED[observation.power_interface]
    saw_off2 = any(w.opinion and w.consistent_with == (signalled,) for w in vmm_side)
    off2_observable = contract.observable or any(w.opinion for w in vmm_side[1:])
    if qmp.consistent_with in ((PowerOffClass.VMM_CRASH,), (PowerOffClass.VMM_HANG,)):
        kind = qmp.consistent_with[0]
    elif observation.command_status is not None:
        kind = PowerOffClass.ABORTED
    elif qmp.consistent_with == SILENT_AFTER_TROUBLE:
        kind = PowerOffClass.CRASH
    elif qmp.consistent_with == NO_SHUTDOWN:
        kind = PowerOffClass.HANG
    elif qmp.consistent_with == (PowerOffClass.CRASH,) or console.facts["panic"]:
        kind = PowerOffClass.CRASH
    elif disk.facts.get("image_present") or console.facts["image_saved"]:
        kind = signalled if saw_off2 else PowerOffClass.HIBERNATE_OFF if off2_observable else PowerOffClass.HIBERNATE
    else:
        kind = PowerOffClass.POWEROFF
    notes = [] if off2_observable else [NOT_OBSERVABLE]
    if seen["host-kvm"].opinion and not contract.observable:
        notes += _host_trace_note(seen["host-kvm"].facts)
    return PowerOffVerdict(boot=observation.boot, intent=observation.intent, kind=kind, witnesses=witnesses,
                           off2_observable=off2_observable, notes=notes)


def _host_trace_note(facts: dict[str, Any]) -> list[str]:
    """What the host kernel's trace showed of the power-off, where QEMU could not say it."""
    if facts.get("system_off2"):
        return [QEMU_DROPS_OFF2]
    if facts.get("system_off"):
        after = ", after PSCI_FEATURES" if facts.get("psci_features") else ""
        return [HOST_SAW_PLAIN_OFF.format(after=after)]
    return []


IMPLICIT_EXPECTATIONS: dict[Intent, tuple[PowerOffClass, ...]] = {
    Intent.HIBERNATE: HIBERNATED,
    Intent.POWEROFF: (PowerOffClass.POWEROFF,),
    Intent.CRASH: (PowerOffClass.CRASH,),
}
"""What a power-off step without `expect:` is held to: the class its intent obviously implies."""


def _expected(observation: PowerOffObservation) -> tuple[str, ...]:
    """The classes a power-off is held to. A scenario written for both arches says `hibernate-off2`; on an
    ACPI guest that means its counterpart, `hibernate-s4`."""
    if not observation.expect:
        return IMPLICIT_EXPECTATIONS[observation.intent]
    if observation.expect == PowerOffClass.HIBERNATE_OFF2:
        return (HIBERNATE_SIGNALLED[observation.power_interface],)
    return (observation.expect,)


def _trial_check(verdict: PowerOffVerdict, observation: PowerOffObservation) -> Check:
    """A hibernation the kernel only tries comes back: by default it must return, with status 0."""
    allowed = (observation.expect,) if observation.expect else (PowerOffClass.ABORTED,)
    status = observation.command_status
    passed = verdict.kind in allowed and (verdict.kind != PowerOffClass.ABORTED or status == 0)
    detail = (f"hibernate ({observation.trial}) ended as {verdict.kind}"
              + (f" with status {status}" if status is not None else "") + f", expected {' or '.join(allowed)}"
              + (" with status 0" if PowerOffClass.ABORTED in allowed else ""))
    if observation.kernel_trouble is not None:
        detail += f"; kernel trouble, then silence: {observation.kernel_trouble!r}"
    return Check(f"{verdict.boot} {observation.trial}", passed, detail, observation.step_line,
                 kind=CheckKind.POWER_OFF, boot=verdict.boot)


def _power_off_checks(verdicts: list[PowerOffVerdict], observations: Observations) -> list[Check]:
    checks = []
    for verdict, observation in zip(verdicts, observations.power_offs, strict=True):
        if observation.trial is not None:
            checks.append(_trial_check(verdict, observation))
            continue
        allowed = _expected(observation)
        detail = f"{observation.intent} ended as {verdict.kind}, expected {' or '.join(allowed)}"
        if observation.kernel_trouble is not None:
            detail += f"; kernel trouble, then silence: {observation.kernel_trouble!r}"
        if verdict.notes:
            detail += "; " + "; ".join(verdict.notes)
        if verdict.disagreements:
            detail += "; witnesses disagree: " + "; ".join(verdict.disagreements)
        checks.append(Check(f"{verdict.boot} power-off", verdict.kind in allowed, detail, observation.step_line,
                            kind=CheckKind.POWER_OFF, boot=verdict.boot))
    return checks


def _boot_checks(observations: Observations) -> list[Check]:
    checks = []
    for boot in observations.boots:
        if boot.expect != "any":
            checks.append(Check(f"{boot.boot} came up {boot.expect}", boot.outcome == boot.expect,
                                f"{boot.boot} came up {boot.outcome}, expected {boot.expect}", boot.step_line,
                                kind=CheckKind.CAME_UP, boot=boot.boot))
        if boot.outcome is BootKind.RESUMED:
            status = boot.hibernate_command_status
            checks.append(Check(
                f"{boot.boot} resumed userspace", status == 0,
                "the shell that hibernated completed its hibernate command after resume with status "
                f"{status}" if status is not None else "no hibernate command was pending",
                boot.step_line, kind=CheckKind.RESUMED_USERSPACE, boot=boot.boot,
            ))
    return checks


def _evidence_checks(observations: Observations) -> list[Check]:
    checks = []
    for request in observations.checks:
        wants, found = request.expectations, request.evidence
        line = request.step_line
        if "evidence" in wants and found is not None:
            present = wants["evidence"] == "present"
            ok = found.token_found == present and found.marker_alive == present
            checks.append(Check(
                f"evidence {wants['evidence']} in {request.boot}", ok and found.planted is not None,
                f"token {'found' if found.token_found else 'absent'}, marker process "
                f"{'alive' if found.marker_alive else 'gone'}"
                + ("" if found.planted else " (nothing was planted: add a mark step)"), line,
                kind=CheckKind.EVIDENCE, boot=request.boot,
            ))
        if "boot_id" in wants and found is not None:
            planted = found.planted.boot_id if found.planted else None
            same = found.boot_id == planted
            checks.append(Check(
                f"boot_id {wants['boot_id']} in {request.boot}", same == (wants["boot_id"] == "same"),
                f"boot_id {found.boot_id}, planted under {planted}", line, kind=CheckKind.BOOT_ID, boot=request.boot,
            ))
        if "swap_signature" in wants:
            checks.append(Check(
                f"swap signature {wants['swap_signature']} in {request.boot}",
                request.swap_signature == wants["swap_signature"],
                f"the guest sees {request.swap_signature}", line, kind=CheckKind.SWAP_SIGNATURE, boot=request.boot,
            ))
        for pattern in wants.get("console_required", []):
            hit = re.search(pattern, request.console_text)
            checks.append(Check(f"console shows /{pattern}/ in {request.boot}", hit is not None,
                                f"found: {hit.group(0)!r}" if hit else "not on the console", line,
                                kind=CheckKind.CONSOLE_SHOWS, boot=request.boot))
        for pattern in wants.get("console_forbidden", []):
            hit = re.search(pattern, request.console_text)
            checks.append(Check(f"console never shows /{pattern}/ in {request.boot}", hit is None,
                                f"found: {hit.group(0)!r}" if hit else "absent", line,
                                kind=CheckKind.CONSOLE_NEVER_SHOWS, boot=request.boot))
    return checks


def _command_checks(observations: Observations) -> list[Check]:
    checks = []
    for command in observations.commands:
        ok = command.status == command.expect_status
        detail = f"exit {command.status}, expected {command.expect_status}"
        if command.output_contains is not None:
            ok = ok and command.output_contains in command.output
            detail += f"; output {'contains' if command.output_contains in command.output else 'lacks'}"
            detail += f" {command.output_contains!r}"
        checks.append(Check(f"`{command.command}` in {command.boot} over {command.channel}", ok, detail,
                            command.step_line, kind=CheckKind.COMMAND, boot=command.boot))
    return checks


def _console_health(observations: Observations, boot_consoles: dict[str, list[str]]) -> list[Check]:
    crashed = {p.boot for p in observations.power_offs if p.intent is Intent.CRASH}
    checks = []
    for boot, lines in boot_consoles.items():
        if boot in crashed:
            continue
        bad = [line.strip() for line in lines if KERNEL_TROUBLE.search(line)]
        checks.append(Check(f"{boot} console healthy", not bad,
                            f"found: {bad[0]!r}" if bad else "no panic, Oops, BUG: or Call trace",
                            kind=CheckKind.CONSOLE_HEALTHY, boot=boot))
    return checks


def _expectation_checks(power_offs: list[PowerOffVerdict], observations: Observations) -> list[Check]:
    return (_power_off_checks(power_offs, observations) + _boot_checks(observations)
            + _evidence_checks(observations) + _command_checks(observations))


def step_expectations(observations: Observations) -> list[Check]:
    """The expectations of what one step observed, judged as the verdict will judge them.

    The terminal marks a step ✗ from these while the run goes on, so its step lines and the
    verdict never disagree.
    """
    return _expectation_checks([classify(p) for p in observations.power_offs], observations)


def _what_failed_first(reason: str, findings: list[Finding], boot_consoles: dict[str, list[str]]) -> str:
    """A failed run's reason, led by its most severe catalogue finding, else by a kernel phase that failed
    (unless the reason already quotes that line)."""
    if findings:
        lead = findings[0].headline()
        quoted = findings[0].line
    else:
        failed = [(boot, phase) for boot, lines in boot_consoles.items()
                  for phase in parse_kernel_phases(lines).failed()]
        if not failed:
            return reason
        boot, phase = failed[0]
        lead, quoted = f"{boot}: kernel phase {phase.name} failed: {phase.line!r}", phase.line
    return reason if quoted in reason else f"{lead}; {reason}"


def _vmm_fault_checks(observations: Observations) -> list[Check]:
    """A QEMU that failed outside a power-off fails a check of its own, named by its class."""
    return [Check(f"{fault.boot} QEMU ran", False, f"{fault.kind} during `{fault.step}`: {fault.detail}",
                  fault.step_line, kind=CheckKind.QEMU_RAN, boot=fault.boot) for fault in observations.vmm_faults]


def judge(observations: Observations, boot_consoles: dict[str, list[str]], error: str | None,
          set_up_failed: bool = False, lab_fault: bool = False, entries: list[Entry] | None = None) -> RunVerdict:
    """The run's verdict; `error` is why the run stopped early, if it did (before it began: `set_up_failed`;
    through no fault of the guest's: `lab_fault`). `entries` is the log catalogue (default: the shipped one)."""
    if set_up_failed:
        return RunVerdict(False, f"set-up error: {error}", set_up_failed=True)
    verdict = _judge(observations, boot_consoles, error, lab_fault)
    resuming = {boot.boot for boot in observations.boots if boot.expect == BootKind.RESUMED}
    verdict.findings = match_consoles(boot_consoles, catalogue() if entries is None else entries, resuming)
    if not verdict.passed:
        verdict.reason = _what_failed_first(verdict.reason, verdict.findings, boot_consoles)
    return verdict


def _judge(observations: Observations, boot_consoles: dict[str, list[str]], error: str | None,
           lab_fault: bool = False) -> RunVerdict:
    power_offs = [classify(p) for p in observations.power_offs]
    checks = (_expectation_checks(power_offs, observations) + _vmm_fault_checks(observations)
              + _console_health(observations, boot_consoles))
    failed = [c for c in checks if not c.passed]
    if error is not None:
        sick = next((c for c in failed if c.kind is CheckKind.CONSOLE_HEALTHY), None)
        if observations.kernel_troubles:
            trouble = observations.kernel_troubles[-1]
            error = (f"{trouble.boot}: kernel trouble: {trouble.line!r}, then {trouble.quiet_seconds:g}s of "
                     f"silence while waiting for {trouble.waiting_for} (`{trouble.step}`, line {trouble.step_line})")
        elif sick is not None:
            error = f"{sick.boot}: kernel trouble ({sick.detail}); {error}"
        guest_trouble = bool(observations.kernel_troubles) or sick is not None
        return RunVerdict(False, error, power_offs, checks, vmm_faults=observations.vmm_faults,
                          lab_fault=lab_fault and not guest_trouble)
    if failed:
        first = failed[0]
        where = f" (line {first.line})" if first.line else ""
        return RunVerdict(False, f"{first.name}: {first.detail}{where}", power_offs, checks)
    summary = ", ".join(f"{p.boot} {p.kind}" for p in power_offs) or "no power-offs"
    return RunVerdict(True, f"{len(checks)} checks passed ({summary})", power_offs, checks)
