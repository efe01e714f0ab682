"""How the PSCI layer hands a power-off to QEMU, against a scripted gdbstub that plays QEMU's part.

QEMU queues a vCPU's own power-off behind the step that executed SYSTEM_OFF; a layer that resumed the
VM at once let the guest read the call back as returned and fall back to SYSTEM_OFF. These tests pin
the order: step, then no resume while QEMU exits, and a resume only if QEMU never does. A CPU_OFF
that QEMU carries out is the other call that does not return, and is logged without a response.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import pytest

from lab.deadline import wait_until
from lab.machine.channels.gdbstub import AARCH64_PC, encode_le_hex, frame, register_size
from lab.psci.firmware import PsciAction, PsciPersonality, to_register
from lab.psci.layer import INSTRUCTION_BYTES, PsciLayer
from lab.psci.symbols import ConduitSites
from lab.vocabulary import PSCI_CPU_OFF, PSCI_SYSTEM_OFF, PSCI_SYSTEM_OFF2_64, PSCI_VERSION
from tests.support.fake_gdbstub import FakeStub

HVC_SITE = 0xFFFF800080043CB4
THREAD = "p01.01"


def registers(x0: int, pc: int) -> str:
    """A `g` reply: x0 and pc set, every other core register 0."""
    values = {0: x0, AARCH64_PC: pc}
    return "".join(encode_le_hex(values.get(number, 0), register_size(number)) for number in range(34))


def session_reply(payload: str) -> list[bytes]:
    """QEMU's answers to the packets of a session that are not about the trapped call."""
    replies = {"qSupported:swbreak+;vContSupported+": "PacketSize=1000;vContSupported+", "vCont?": "vCont;c;C;s;S"}
    if payload in replies:
        return [frame(replies[payload])]
    if payload == "^C":
        return [frame(f"T02thread:{THREAD};")]
    if payload.startswith(("Z0,", "Hg", "P", "D")):
        return [frame("OK")]
    return [frame("")]


class PoweringOffQemu:
    """A guest that traps once on SYSTEM_OFF2(0, 0); QEMU exits `exit_after` seconds after the step
    (never, if None). Every packet the layer sent is kept in `stub.received`."""

    def __init__(self, exit_after: float | None) -> None:
        self.exit_after = exit_after
        self.stub: FakeStub | None = None
        self.resumed_after_step = threading.Event()
        self._stepped = False

    def handle(self, payload: str) -> list[bytes] | None:
        if payload == "g":
            return [frame(registers(PSCI_SYSTEM_OFF2_64, HVC_SITE))]
        if payload == "vCont;c":
            if self._stepped:
                self.resumed_after_step.set()
                return []
            return [frame(f"T05thread:{THREAD};")]
        if payload == f"vCont;s:{THREAD}":
            self._stepped = True
            if self.exit_after is not None:
                threading.Timer(self.exit_after, self._exit).start()
            return [frame(f"T05thread:{THREAD};")]
        return session_reply(payload)

    def _exit(self) -> None:
        """As QEMU's exit does: the stub's end shut down, so the layer reads the end of the stream. A close()
        alone leaves the socket open while the stub's thread still waits in recv() on it, and the layer
        never saw QEMU go (a third of the runs on a loaded machine)."""
        assert self.stub is not None
        self.stub.sock.sendall(frame("W00"))
        self.stub.sock.shutdown(socket.SHUT_RDWR)
        self.stub.sock.close()


class PassingThroughQemu:
    """A guest that traps once on `function_id`; QEMU's step leaves x0 = `x0_after` past the conduit."""

    def __init__(self, function_id: int, x0_after: int) -> None:
        self.function_id = function_id
        self.x0_after = x0_after
        self.stub: FakeStub | None = None
        self._stepped = False

    def handle(self, payload: str) -> list[bytes] | None:
        if payload == "g":
            after = registers(self.x0_after, HVC_SITE + INSTRUCTION_BYTES)
            return [frame(after if self._stepped else registers(self.function_id, HVC_SITE))]
        if payload == "vCont;c":
            return [] if self._stepped else [frame(f"T05thread:{THREAD};")]
        if payload == f"vCont;s:{THREAD}":
            self._stepped = True
            return [frame(f"T05thread:{THREAD};")]
        return session_reply(payload)


class ScriptedQemu(Protocol):
    stub: FakeStub | None

    def handle(self, payload: str) -> list[bytes] | None: ...


@contextmanager
def layer_on(qemu: ScriptedQemu, tmp_path: Path, request_timeout: float = 2.0,
             personality: PsciPersonality = PsciPersonality.KVM) -> Iterator[PsciLayer]:
    path = tmp_path / "gdb.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def accept() -> None:
        connection, _ = server.accept()
        qemu.stub = FakeStub(connection, qemu.handle)

    threading.Thread(target=accept, daemon=True).start()
    layer = PsciLayer(path, ConduitSites("0" * 64, HVC_SITE, None), personality,
                      request_timeout=request_timeout)
    try:
        layer.attach(timeout=2.0)
        layer.resume()
        yield layer
    finally:
        layer.close()
        server.close()


def test_the_vm_stays_stopped_after_the_power_off_until_qemu_exits(tmp_path: Path) -> None:
    qemu = PoweringOffQemu(exit_after=0.5)
    with layer_on(qemu, tmp_path) as layer:
        assert layer.wait(5.0)
        assert layer.error is None
        assert layer.qemu_exited
        assert not qemu.resumed_after_step.is_set()
        assert qemu.stub is not None
        written = [packet for packet in qemu.stub.received if packet.startswith("P0=")]
        assert written == [f"P0={encode_le_hex(PSCI_SYSTEM_OFF, 8)}"]
        [call] = layer.calls
        assert call.function_id == PSCI_SYSTEM_OFF2_64 and call.action is PsciAction.POWER_OFF


def test_a_qemu_that_does_not_exit_gets_its_guest_back(tmp_path: Path) -> None:
    qemu = PoweringOffQemu(exit_after=None)
    started = time.monotonic()
    with layer_on(qemu, tmp_path, request_timeout=0.3) as layer:
        assert qemu.resumed_after_step.wait(5.0)
        assert time.monotonic() - started >= 0.3
        assert layer.error is None
        assert not layer.qemu_exited


@pytest.mark.parametrize(("function_id", "x0_after", "response"), [
    (PSCI_CPU_OFF, PSCI_CPU_OFF, None),
    (PSCI_CPU_OFF, to_register(-3), -3),
    (PSCI_VERSION, 0x10001, 0x10001),
], ids=["cpu-off-carried-out", "cpu-off-denied", "version-answered-by-qemu"])
def test_a_passed_through_call_logs_what_the_guest_read_back(
        tmp_path: Path, function_id: int, x0_after: int, response: int | None) -> None:
    qemu = PassingThroughQemu(function_id, x0_after)
    with layer_on(qemu, tmp_path, personality=PsciPersonality.NONE) as layer:
        [call] = wait_until(lambda: layer.calls or None, 5.0, "the layer to log the trapped call")
        assert layer.error is None
        assert (call.function_id, call.action, call.response) == (function_id, PsciAction.PASS_THROUGH, response)
