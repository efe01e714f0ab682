"""How a VMM tells the lab that a guest powered off with SYSTEM_OFF2 (or ACPI S4).

Stock QEMU reports SYSTEM_OFF2 exactly like SYSTEM_OFF on KVM, so over QMP it is not
observable at all. The contract the lab documents for an OFF2-aware QEMU is QEMU's own
x86 S4 behaviour: `SUSPEND_DISK`, then `SHUTDOWN`. Labs whose patch reports it differently
name their contract:

| contract                 | OFF2 is seen when                                   |
|--------------------------|-----------------------------------------------------|
| `none`                   | never (stock QEMU on arm64 KVM)                     |
| `suspend-disk`           | a `SUSPEND_DISK` event comes before `SHUTDOWN`      |
| `event:NAME`             | a `NAME` event comes before `SHUTDOWN`              |
| `shutdown-reason:REASON` | the `SHUTDOWN` event's `reason` is `REASON`         |

Chosen with `--off2-contract`, or `LAB_QEMU_OFF2_CONTRACT`; `LAB_QEMU_OFF2_AWARE=1` means
`suspend-disk`. x86 guests default to `suspend-disk` (ACPI S4 is what QEMU reports natively).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lab.errors import UsageError


@dataclass(frozen=True)
class Off2Contract:
    kind: str
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Off2Contract:
        kind, _, value = text.partition(":")
        if (kind in ("none", "suspend-disk") and not value) or (kind in ("event", "shutdown-reason") and value):
            return cls(kind, value)
        raise UsageError(f"unknown OFF2 contract {text!r} (none, suspend-disk, event:NAME, shutdown-reason:REASON)")

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" if self.value else self.kind

    @property
    def observable(self) -> bool:
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


def default_contract(guest_arch: str, given: str | None) -> Off2Contract:
    """The user's contract, else the environment's, else what this arch's stock QEMU does."""
    text = given or os.environ.get("LAB_QEMU_OFF2_CONTRACT")
    if text:
        return Off2Contract.parse(text)
    if guest_arch == "x86_64" or os.environ.get("LAB_QEMU_OFF2_AWARE") == "1":
        return Off2Contract("suspend-disk")
    return Off2Contract("none")
