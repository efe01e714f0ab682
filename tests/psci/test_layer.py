"""The PSCI layer under a real Debian arm64 guest on TCG, judged by what the guest itself did.

The guest runs in the lab's own Machine (QEMU paused, QMP events recorded on a thread) with only
the layer attached: no scenario machinery, so what is tested is the layer and nothing else.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.image.guest_image import GuestImage
from lab.machine.channels.shell import GuestShell
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec
from lab.psci.firmware import PsciAction, PsciPersonality
from lab.psci.layer import PsciLayer
from lab.psci.symbols import ConduitSites, find_conduit_sites
from lab.rundir import RunDirectory
from lab.vocabulary import PSCI_SYSTEM_OFF, PSCI_VERSION, SYSTEM_OFF2_IDS

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 120
HIBERNATE_TIMEOUT = 120


@pytest.fixture(scope="module")
def sites(default_image: GuestImage) -> ConduitSites:
    return find_conduit_sites(default_image.kernel)


@dataclass
class Guest:
    machine: Machine
    layer: PsciLayer
    shell: GuestShell
    call_log: Path

    def log_text(self) -> str:
        return self.machine.record.console_log.read_text(errors="replace")


@contextmanager
def booted(tmp_path: Path, image: GuestImage, sites: ConduitSites, personality: PsciPersonality) -> Iterator[Guest]:
    """A guest started paused under the layer, then run to its shell; QEMU never outlives the test."""
    swap = tmp_path / "swap.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(swap), "256M"], check=True)
    spec = MachineSpec(arch="aarch64", kernel=image.kernel, initrd=image.initramfs, append=image.kernel_append,
                       disks=(Disk(swap),), gdbstub=True)
    call_log = tmp_path / "calls.jsonl"
    with Machine(spec, RunDirectory(tmp_path).boot("boot1"), time.monotonic()) as machine:
        machine.launch()
        layer = PsciLayer(machine.gdb_socket, sites, personality, call_log)
        try:
            layer.attach(timeout=10)
            layer.resume()
            machine.console.expect("lab-init: ready", BOOT_TIMEOUT, "the guest's init")
            yield Guest(machine, layer, GuestShell(machine.console), call_log)
        finally:
            machine.close()
            layer.close()


def hibernate(guest: Guest) -> None:
    """Hibernate and wait for QEMU to exit (-no-reboot: the guest powering off ends the process)."""
    guest.shell.start("echo disk > /sys/power/state")
    assert guest.machine.wait_exit(HIBERNATE_TIMEOUT) == 0
    assert guest.layer.wait(10), "the layer's thread outlived QEMU"


def assert_guest_shut_down(guest: Guest) -> None:
    assert "reboot: Power down" in guest.log_text()
    shutdowns = guest.machine.qmp.seen("SHUTDOWN")
    assert [event["data"] for event in shutdowns] == [{"guest": True, "reason": "guest-shutdown"}]
    assert guest.layer.qemu_exited
    assert guest.layer.error is None


def test_kvm_personality_makes_the_guest_hibernate_with_system_off2(
    tmp_path: Path, default_image: GuestImage, sites: ConduitSites
) -> None:
    with booted(tmp_path, default_image, sites, PsciPersonality.KVM) as guest:
        assert "psci: PSCIv1.3 detected in firmware." in guest.log_text()
        assert not [call for call in guest.layer.calls if call.function_id in SYSTEM_OFF2_IDS]
        hibernate(guest)

        assert "PM: Image saving done" in guest.log_text()
        off2 = [call for call in guest.layer.calls if call.function_id in SYSTEM_OFF2_IDS]
        assert len(off2) == 1
        assert off2[0].args[:2] == (0, 0)
        assert off2[0].action is PsciAction.POWER_OFF
        assert not [call for call in guest.layer.calls if call.function_id == PSCI_SYSTEM_OFF]
        assert_guest_shut_down(guest)

        records = [json.loads(line) for line in guest.call_log.read_text().splitlines()]
        assert records == [call.as_record() for call in guest.layer.calls]
        assert records[0]["name"] == "PSCI_VERSION" and records[0]["response"] == 0x10003


def test_none_personality_leaves_the_guest_on_psci_1_1(
    tmp_path: Path, default_image: GuestImage, sites: ConduitSites
) -> None:
    with booted(tmp_path, default_image, sites, PsciPersonality.NONE) as guest:
        assert "psci: PSCIv1.1 detected in firmware." in guest.log_text()
        hibernate(guest)

        calls = guest.layer.calls
        assert not [call for call in calls if call.function_id in SYSTEM_OFF2_IDS]
        assert all(call.action is PsciAction.PASS_THROUGH for call in calls)
        version = next(call for call in calls if call.function_id == PSCI_VERSION)
        assert version.response == 0x10001
        system_off = [call for call in calls if call.function_id == PSCI_SYSTEM_OFF]
        assert len(system_off) == 1
        assert_guest_shut_down(guest)


def test_closing_the_layer_leaves_a_running_guest(
    tmp_path: Path, default_image: GuestImage, sites: ConduitSites
) -> None:
    with booted(tmp_path, default_image, sites, PsciPersonality.KVM) as guest:
        guest.layer.close()
        assert not guest.layer.running
        assert guest.layer.error is None
        assert guest.shell.succeed("echo alive-$((40 + 2))").strip() == "alive-42"
