"""Attaching the PSCI v1.3 layer to a TCG arm64 machine: conduit sites from the kernel, then trap.

The personality `qemu` attaches nothing: QEMU's own PSCI answers (v1.1 in a stock build, v1.3 with
SYSTEM_OFF2 in the lab's patched one), and the run sees PSCI only through what QEMU reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import SetupError, UsageError
from lab.image.guest_image import GuestImage
from lab.machine.process import Machine
from lab.psci.firmware import PsciPersonality
from lab.psci.layer import PsciLayer
from lab.psci.symbols import find_conduit_sites


@dataclass(frozen=True)
class GuestPsci:
    """How the PSCI v1.3 layer is attached to each boot of a TCG arm64 guest."""

    personality: str
    attach: Callable[[Machine, Path], PsciSession]


class PsciSession:
    """The layer serving one boot; `calls` are the JSON records the PSCI witness reads."""

    def __init__(self, layer: PsciLayer) -> None:
        self.layer = layer

    @property
    def calls(self) -> list[dict[str, Any]]:
        records = [call.as_record() for call in self.layer.calls]
        if self.layer.error is not None:
            records.append({"function_id": "0x0", "name": "layer-error", "args": [],
                            "action": "error", "response": str(self.layer.error)})
        return records

    def close(self) -> None:
        self.layer.close()


NO_LAYER = "qemu"
"""The personality that attaches no layer."""


def parse_personality(personality: str) -> PsciPersonality | None:
    """A layer personality, or None for `qemu` (no layer)."""
    if personality == NO_LAYER:
        return None
    try:
        return PsciPersonality(personality)
    except ValueError:
        known = ", ".join([*(p.value for p in PsciPersonality), NO_LAYER])
        raise UsageError(f"unknown PSCI personality {personality!r} (known: {known})") from None


def psci_attacher(chosen: PsciPersonality, image: GuestImage, system_map: Path | None = None,
                  qemu_reports_off2: bool = False) -> GuestPsci:
    """The layer for `image`'s kernel; symbols come from its kallsyms, or from a System.map the user gives."""
    if "nokaslr" not in image.kernel_append.split():
        raise SetupError(f"image {image.name} boots without nokaslr: the PSCI layer needs fixed kernel addresses")
    sites = find_conduit_sites(image.kernel, system_map=system_map)

    def attach(machine: Machine, call_log: Path) -> PsciSession:
        layer = PsciLayer(machine.gdb_socket, sites, chosen, call_log, qemu_reports_off2=qemu_reports_off2)
        layer.attach()
        layer.resume()
        return PsciSession(layer)

    return GuestPsci(chosen.value, attach)
