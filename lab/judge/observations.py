"""What the steps saw, as plain records: the only input the witnesses and the verdict get.

Steps launch QEMU and talk to the guest; they record observations and never judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lab.rundir import BootRecord
from lab.vocabulary import BootKind, Intent, PowerInterface


@dataclass
class BootObservation:
    """How a boot came up: fresh (init reached `ready`) or resumed (kernel logged hibernation exit)."""

    boot: str
    outcome: BootKind
    expect: str
    step_line: int
    hibernate_command_status: int | None = None
    detail: str = ""


@dataclass(kw_only=True)
class PowerOffObservation:
    """Everything the VMM, the console and the disk said about one power-off."""

    boot: str
    intent: Intent
    expect: str | None
    step_line: int
    record: BootRecord
    timed_out: bool
    psci_active: bool
    psci_personality: str | None
    psci_calls: list[dict[str, Any]] = field(default_factory=list)
    disk_header: dict[str, Any] | None = None
    disk_error: str | None = None
    off2_contract: str = "none"
    command_status: int | None = None
    """Set when the guest's power-off command itself returned, with the guest still running (it gave up)."""
    command_output: str = ""
    host_hvc_calls: list[dict[str, Any]] | None = None
    """The guest's HVCs as the KVM host's kernel traced them (x0 = the function ID); None: not traced."""
    console: str = "uart"
    """The guest's console device; on `virtio` the kernel's power-down line is never seen (the device is gone)."""
    kernel_trouble: str | None = None
    """The kernel's panic, Oops or BUG line after which the console fell silent, ending the lab's wait early."""
    power_interface: PowerInterface = PowerInterface.PSCI
    """How the guest tells the platform it powers off (PSCI on arm64, ACPI on x86_64)."""
    trial: str | None = None
    """A hibernation the kernel only tries (`pm_test=devices`, `test_resume`): it returns, with 0 if it went well."""


@dataclass
class Evidence:
    """What `mark` planted in guest RAM."""

    token: str
    marker_pid: int
    marker_seconds: int
    boot_id: str


@dataclass
class EvidenceObservation:
    """What a `check` step found in the guest, next to what was planted."""

    step_line: int
    boot: str
    token_found: bool
    marker_alive: bool
    boot_id: str
    planted: Evidence | None


@dataclass
class CheckRequest:
    """The expectations a `check` step wrote down, with what the guest and disk showed then."""

    step_line: int
    boot: str
    expectations: dict[str, Any]
    evidence: EvidenceObservation | None
    swap_signature: str | None
    console_text: str


@dataclass
class CommandObservation:
    """A `run` step's command, what it returned, and the channel it went over (serial or ssh)."""

    step_line: int
    boot: str
    command: str
    status: int
    output: str
    expect_status: int
    output_contains: str | None
    channel: str = "serial"


@dataclass
class DiskOperation:
    """A host-side change to the swap disk between boots, with the header before and after."""

    step_line: int
    operation: str
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(kw_only=True)
class KernelTroubleObservation:
    """A step stopped because the guest's kernel printed a panic, an Oops or a BUG and then fell silent."""

    step_line: int
    step: str
    """The step as written (`boot expect=resumed`)."""
    boot: str
    line: str
    """The first panic, Oops or BUG line on the boot's console, quoted."""
    waiting_for: str
    quiet_seconds: float
    """How long the console stayed silent before the lab stopped waiting."""
    seen_at: float | None = None
    """When the line arrived, in seconds since the run started."""
    stopped_at: float | None = None
    """When the lab stopped waiting, in seconds since the run started."""


@dataclass
class Observations:
    boots: list[BootObservation] = field(default_factory=list)
    power_offs: list[PowerOffObservation] = field(default_factory=list)
    checks: list[CheckRequest] = field(default_factory=list)
    commands: list[CommandObservation] = field(default_factory=list)
    disk_operations: list[DiskOperation] = field(default_factory=list)
    kernel_troubles: list[KernelTroubleObservation] = field(default_factory=list)
    kernel_phases: dict[str, Any] = field(default_factory=dict)
    """The kernel's own PM phases per boot and their spread (`lab.judge.phase_summary`), read once the run ends."""
    cycles: list[dict[str, Any]] = field(default_factory=list)
    """Each round of a repeat: its awake delay, its boots, whether it met its expectations (lab.scenario.endurance)."""

    def _lists(self) -> tuple[list[Any], ...]:
        return self.boots, self.power_offs, self.checks, self.commands, self.disk_operations, self.kernel_troubles

    def mark(self) -> tuple[int, ...]:
        """Where the record stands now; `since(mark)` is what was observed after."""
        return tuple(len(items) for items in self._lists())

    def since(self, mark: tuple[int, ...]) -> Observations:
        boots, power_offs, checks, commands, disk_operations, kernel_troubles = (
            items[count:] for items, count in zip(self._lists(), mark, strict=True))
        return Observations(boots=boots, power_offs=power_offs, checks=checks, commands=commands,
                            disk_operations=disk_operations, kernel_troubles=kernel_troubles)

    def to_json(self) -> dict[str, Any]:
        def plain(item: Any) -> dict[str, Any]:
            data = asdict(item)
            if isinstance(item, PowerOffObservation):
                data["record"] = item.record.to_json()
            return data

        return {
            "boots": [asdict(b) for b in self.boots],
            "commands": [asdict(c) for c in self.commands],
            "disk_operations": [asdict(d) for d in self.disk_operations],
            "power_offs": [plain(p) for p in self.power_offs],
            "kernel_troubles": [asdict(t) for t in self.kernel_troubles],
            "kernel_phases": self.kernel_phases,
            "cycles": self.cycles,
        }
