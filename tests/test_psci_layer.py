"""The PSCI layer under a real Debian arm64 guest on TCG, judged by what the guest itself did.

Needs LAB_TEST_KERNEL (a raw arm64 Image with kallsyms) and LAB_TEST_INITRD (the lab's test initramfs:
prints `lab-init: ready`, gives a shell on ttyAMA0, swaps on /dev/vda).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest

from lab.deadline import wait_until
from lab.kernel_symbols import ConduitSites, find_conduit_sites
from lab.psci import PSCI_SYSTEM_OFF, PSCI_VERSION, SYSTEM_OFF2_IDS, PsciAction, PsciPersonality
from lab.psci_layer import PsciLayer

pytestmark = pytest.mark.guest

READY = "lab-init: ready"
BOOT_TIMEOUT = 120
HIBERNATE_TIMEOUT = 120


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initrd: Path


@pytest.fixture(scope="module")
def guest_files() -> GuestFiles:
    paths = {name: os.environ.get(name) for name in ("LAB_TEST_KERNEL", "LAB_TEST_INITRD")}
    missing = [name for name, value in paths.items() if not value or not Path(value).is_file()]
    if missing:
        pytest.skip(f"set {' and '.join(missing)} (guest kernel Image / test initramfs) to run guest tests")
    return GuestFiles(Path(str(paths["LAB_TEST_KERNEL"])), Path(str(paths["LAB_TEST_INITRD"])))


@pytest.fixture(scope="module")
def sites(guest_files: GuestFiles) -> ConduitSites:
    return find_conduit_sites(guest_files.kernel)


class QmpEvents:
    """Collects QMP events on a thread so none is lost when QEMU exits right after emitting it."""

    def __init__(self, path: Path) -> None:
        self.events: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        wait_until(lambda: self._try_connect(path), 10, "the QMP socket")
        self._reader = self._sock.makefile("r")
        self._reader.readline()
        self._sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _try_connect(self, path: Path) -> bool | None:
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        return True

    def _read(self) -> None:
        for line in self._reader:
            message = json.loads(line)
            if "event" in message:
                self.events.append(message)

    def named(self, name: str) -> list[dict[str, Any]]:
        self._thread.join(5)
        return [event for event in self.events if event["event"] == name]

    def close(self) -> None:
        self._sock.close()


@dataclass
class Guest:
    console: pexpect.spawn
    layer: PsciLayer
    qmp: QmpEvents
    console_log: Path
    call_log: Path

    def log_text(self) -> str:
        return self.console_log.read_text(errors="replace")

    def shell(self, command: str, expect: str, timeout: float = 30) -> None:
        self.console.sendline(command)
        self.console.expect_exact(expect, timeout=timeout)


@contextmanager
def booted(tmp_path: Path, files: GuestFiles, sites: ConduitSites, personality: PsciPersonality) -> Iterator[Guest]:
    """A guest started paused under the layer, then run to its shell; QEMU never outlives the test."""
    swap = tmp_path / "swap.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(swap), "256M"], check=True)
    gdb_socket, qmp_socket = tmp_path / "gdb.sock", tmp_path / "qmp.sock"
    console_log, call_log = tmp_path / "console.log", tmp_path / "calls.jsonl"
    arguments = [
        "-M", "virt", "-cpu", "max", "-accel", "tcg", "-smp", "2", "-m", "1024",
        "-nographic", "-nic", "none", "-no-reboot",
        "-kernel", str(files.kernel), "-initrd", str(files.initrd),
        "-append", "console=ttyAMA0 nokaslr no_console_suspend",
        "-drive", f"file={swap},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0,romfile=",
        "-gdb", f"unix:{gdb_socket},server=on,wait=off",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-S",
    ]  # fmt: skip
    log_file = console_log.open("w")
    console = pexpect.spawn("qemu-system-aarch64", arguments, encoding="utf-8", codec_errors="replace")
    console.logfile_read = log_file
    layer = PsciLayer(gdb_socket, sites, personality, call_log)
    qmp: QmpEvents | None = None
    try:
        qmp = QmpEvents(qmp_socket)
        layer.attach(timeout=10)
        layer.resume()
        console.expect_exact(READY, timeout=BOOT_TIMEOUT)
        console.sendline("")
        console.expect_exact("#", timeout=30)
        yield Guest(console, layer, qmp, console_log, call_log)
    finally:
        if console.isalive():
            console.terminate(force=True)
        layer.close()
        if qmp is not None:
            qmp.close()
        log_file.close()


def hibernate(guest: Guest) -> None:
    """Hibernate and wait for QEMU to exit (-no-reboot: the guest powering off ends the process)."""
    guest.console.sendline("echo disk > /sys/power/state")
    guest.console.expect(pexpect.EOF, timeout=HIBERNATE_TIMEOUT)
    guest.console.close()
    assert guest.layer.wait(10), "the layer's thread outlived QEMU"


def assert_guest_shut_down(guest: Guest) -> None:
    assert guest.console.exitstatus == 0
    assert "reboot: Power down" in guest.log_text()
    shutdowns = guest.qmp.named("SHUTDOWN")
    assert [event["data"] for event in shutdowns] == [{"guest": True, "reason": "guest-shutdown"}]
    assert guest.layer.qemu_exited
    assert guest.layer.error is None


def test_kvm_personality_makes_the_guest_hibernate_with_system_off2(
    tmp_path: Path, guest_files: GuestFiles, sites: ConduitSites
) -> None:
    with booted(tmp_path, guest_files, sites, PsciPersonality.KVM) as guest:
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
    tmp_path: Path, guest_files: GuestFiles, sites: ConduitSites
) -> None:
    with booted(tmp_path, guest_files, sites, PsciPersonality.NONE) as guest:
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


def test_closing_the_layer_leaves_a_running_guest(tmp_path: Path, guest_files: GuestFiles, sites: ConduitSites) -> None:
    with booted(tmp_path, guest_files, sites, PsciPersonality.KVM) as guest:
        guest.layer.close()
        assert not guest.layer.running
        assert guest.layer.error is None
        guest.shell("echo alive-$((40 + 2))", "alive-42")
