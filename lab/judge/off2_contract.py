"""How a VMM tells the lab that a guest powered off with SYSTEM_OFF2 (or ACPI S4): its OFF2 contract.

| contract                 | the QMP witness sees OFF2 when…                     | which VMM                          |
|--------------------------|-----------------------------------------------------|------------------------------------|
| `none`                   | never: OFF2 is reported like a plain power-off      | stock QEMU on arm64 KVM; any QEMU  |
|                          |                                                     | behind the lab's PSCI layer        |
| `unsupported`            | never, and rightly: the VMM's PSCI refuses OFF2, so | stock QEMU's own TCG PSCI (v1.1)   |
|                          | every power-off it sees is a plain one              |                                    |
| `suspend-disk`           | a `SUSPEND_DISK` event comes before `SHUTDOWN`      | x86 ACPI S4 in any QEMU; arm64     |
|                          |                                                     | SYSTEM_OFF2 in the lab's series    |
| `event:NAME`             | a `NAME` event comes before `SHUTDOWN`              | a lab's own VMM patch              |
| `shutdown-reason:REASON` | the `SHUTDOWN` event's `reason` is `REASON`         | a VMM that names hibernation there |

The lab picks the contract itself (`contract_for`) from the guest's arch, the accelerator, whether
the PSCI layer answers PSCI, and what the QEMU build reports (asked of QEMU, see lab.qemu.builds).
A lab running a VMM of its own names the contract with `--off2-contract` or
`LAB_QEMU_OFF2_CONTRACT`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lab.errors import UsageError

CONTRACT_VARIABLE = "LAB_QEMU_OFF2_CONTRACT"
_PLAIN_KINDS = ("none", "unsupported", "suspend-disk")
_VALUED_KINDS = ("event", "shutdown-reason")


@dataclass(frozen=True)
class Off2Contract:
    kind: str
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Off2Contract:
        kind, _, value = text.partition(":")
        if (kind in _PLAIN_KINDS and not value) or (kind in _VALUED_KINDS and value):
            return cls(kind, value)
        raise UsageError(f"unknown OFF2 contract {text!r} "
                         "(none, unsupported, suspend-disk, event:NAME, shutdown-reason:REASON)")

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" if self.value else self.kind

    @property
    def observable(self) -> bool:
        """Whether the QMP witness alone can tell a SYSTEM_OFF2 power-off from a plain one."""
        return self.kind != "none"

    def seen(self, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The event that reports OFF2 under this contract, if QEMU sent it before shutting down."""
        for event in events:
            name = event["event"]
            if name == "SHUTDOWN":
                reason = event.get("data", {}).get("reason")
                return event if self.kind == "shutdown-reason" and reason == self.value else None
            if name == {"suspend-disk": "SUSPEND_DISK", "event": self.value}.get(self.kind):
                return event
        return None


def contract_for(guest_arch: str, accel: str, psci_layer: bool, build_reporting: str | None,
                 given: str | None = None) -> Off2Contract:
    """The contract of one run: the user's, else the environment's, else what this setup does.

    `build_reporting` is the contract a QEMU build speaks when it reports OFF2 itself (None for a
    stock build); the PSCI layer then hands accepted OFF2 calls on to it. Behind the layer a stock
    QEMU only ever sees the plain SYSTEM_OFF the layer turns OFF2 into, so its QMP events cannot
    tell them apart: the layer's own call log does.
    """
    text = given or os.environ.get(CONTRACT_VARIABLE)
    if text:
        return Off2Contract.parse(text)
    if guest_arch == "x86_64":
        return Off2Contract("suspend-disk")
    if build_reporting is not None:
        return Off2Contract.parse(build_reporting)
    if psci_layer:
        return Off2Contract("none")
    return Off2Contract("unsupported" if accel == "tcg" else "none")
