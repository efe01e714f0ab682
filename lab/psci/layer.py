"""Make a TCG guest see PSCI v1.3 by trapping its SMCCC conduit instruction through QEMU's gdbstub.

QEMU's TCG PSCI is v1.1, so a Linux guest never issues SYSTEM_OFF2 there. `PsciLayer` puts a breakpoint
on the kernel's `hvc #0` / `smc #0`, and for each trap asks `PsciFirmware` what to do: answer (write x0,
move pc past the instruction), power off (rewrite x0 to SYSTEM_OFF and let QEMU execute it, so QEMU
reports an ordinary guest shutdown; a QEMU that reports SYSTEM_OFF2 itself gets the call as it is; the VM
then stays stopped until QEMU exits), or
pass the call through to QEMU untouched (step over it). Every
trapped call is logged as one JSON line, so a run can later be judged from what the guest asked for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import ChannelError, WaitTimeout
from lab.machine.channels.gdbstub import AARCH64_PC, GdbError, GdbPeerClosed, GdbRemote, StopKind, StopReply
from lab.psci.firmware import POWER_OFF_FUNCTION, PsciAction, PsciFirmware, PsciPersonality, to_register, to_signed
from lab.psci.symbols import ConduitSites
from lab.vocabulary import PSCI_CPU_OFF, psci_function_name

_log = logging.getLogger(__name__)

SIGTRAP = 5
INSTRUCTION_BYTES = 4
_POLL_SECONDS = 0.2
"""How often the service thread looks up from waiting to notice `close()`."""
_INTERRUPT_SECONDS = 1.0
"""A vCPU stopped without telling us (see PsciLayer) never answers an interrupt; detach anyway."""


@dataclass(frozen=True)
class PsciCall:
    """One trapped conduit call: what the guest asked, what it got back, and how the layer got it there."""

    function_id: int
    args: tuple[int, int, int]
    vcpu: int | None
    seconds: float
    action: PsciAction
    response: int | None
    """The signed value the guest read back in x0; None when it did not return (a power-off, a CPU_OFF carried out)."""

    @property
    def name(self) -> str:
        return psci_function_name(self.function_id)

    def as_record(self) -> dict[str, Any]:
        return {
            "function_id": f"0x{self.function_id:08x}",
            "name": self.name,
            "args": [f"0x{arg:x}" for arg in self.args],
            "vcpu": self.vcpu,
            "seconds": round(self.seconds, 6),
            "response": self.response,
            "action": str(self.action),
        }


def _turned_off(function_id: int, x0_after: int) -> bool:
    """A CPU_OFF that QEMU carried out halts its vCPU past the conduit with x0 untouched: no response."""
    return x0_after == function_id == PSCI_CPU_OFF


class PsciLayer:
    """Serves PSCI for a QEMU started with `-S -gdb unix:PATH,server=on,wait=off`.

    Use: `attach()` while QEMU is paused, then `resume()` to start the guest; a background thread
    services every trap until QEMU exits or `close()` detaches.

    While attached, the layer owns run control. QEMU sends a stop reply only after a resume that came
    from the gdb client, so if the VM is paused (QMP `stop`, reported here as SIGINT and left alone)
    and then resumed by QMP `cont`, the next trap stops the VM silently in runstate `debug` and the
    guest hangs until `close()` detaches. Never send `?` either: QEMU answers it by removing all
    breakpoints.
    """

    def __init__(
        self,
        gdb_socket: Path | str,
        sites: ConduitSites,
        personality: PsciPersonality = PsciPersonality.KVM,
        call_log: Path | None = None,
        request_timeout: float = 5.0,
        qemu_reports_off2: bool = False,
    ) -> None:
        if not sites.addresses:
            raise ValueError("PsciLayer needs at least one conduit site")
        self.gdb_socket = str(gdb_socket)
        self.sites = sites
        self.firmware = PsciFirmware(personality)
        self.call_log = call_log
        self.request_timeout = request_timeout
        self.qemu_reports_off2 = qemu_reports_off2
        """An accepted SYSTEM_OFF2 goes on to QEMU as it is (QEMU then reports it); else as SYSTEM_OFF."""
        self._remote: GdbRemote | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()
        self._calls: list[PsciCall] = []
        self._error: BaseException | None = None
        self._resumed_at = 0.0
        self.qemu_exited = False

    @property
    def calls(self) -> list[PsciCall]:
        with self._lock:
            return list(self._calls)

    @property
    def error(self) -> BaseException | None:
        """What stopped the service thread unexpectedly, kept so the caller can report it."""
        with self._lock:
            return self._error

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def attach(self, timeout: float = 10.0) -> None:
        """Connect to the paused QEMU and trap every known conduit site."""
        remote = GdbRemote.connect(self.gdb_socket, timeout)
        remote.timeout = self.request_timeout
        try:
            for address in self.sites.addresses:
                remote.insert_breakpoint(address)
        except BaseException:
            remote.close()
            raise
        _log.debug("PSCI layer attached to %s, trapping %s", self.gdb_socket,
                   ", ".join(f"0x{address:x}" for address in self.sites.addresses))
        self._remote = remote

    def resume(self) -> None:
        """Start the guest and the thread that answers its traps."""
        remote = self._require_remote()
        self._resumed_at = time.monotonic()
        remote.resume()
        self._thread = threading.Thread(target=self._serve, name="psci-layer", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait for the service thread to end (QEMU exited, error, or closed); True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Detach from a still-running guest (it then runs on with QEMU's own PSCI) and end the thread."""
        if self._remote is None:
            return
        _log.debug("PSCI layer detaching from %s after %d calls", self.gdb_socket, len(self.calls))
        if self._thread is None:
            self._detach_quietly()
            self._remote.close()
            return
        self._stop_requested.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._remote.close()
            self._thread.join(1.0)
            raise WaitTimeout("the PSCI layer thread to stop", timeout)

    def __enter__(self) -> PsciLayer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require_remote(self) -> GdbRemote:
        if self._remote is None:
            raise ChannelError("PsciLayer is not attached")
        return self._remote

    def _serve(self) -> None:
        remote = self._require_remote()
        try:
            while not self._stop_requested.is_set():
                try:
                    stop = remote.wait_stop(_POLL_SECONDS)
                except WaitTimeout:
                    continue
                if stop.kind is not StopKind.SIGNAL:
                    self.qemu_exited = True
                    return
                if stop.code == SIGTRAP:
                    self._service(remote, stop)
            self._interrupt_and_detach(remote)
        except GdbPeerClosed:
            self.qemu_exited = True
        except Exception as error:
            with self._lock:
                self._error = error
            self._detach_quietly()
        finally:
            remote.close()

    def _service(self, remote: GdbRemote, stop: StopReply) -> None:
        """Handle one breakpoint hit on the vCPU that stopped; every other vCPU stays stopped meanwhile."""
        if stop.thread is not None:
            remote.select_thread(stop.thread)
        registers = remote.read_registers()
        pc = registers[AARCH64_PC]
        if pc not in self.sites.addresses:
            raise GdbError(f"trap at 0x{pc:x}, which is no conduit site", received=stop.raw)
        function_id, x1, x2, x3 = registers[0:4]
        response = self.firmware.handle(function_id, x1, x2, x3)
        seconds = time.monotonic() - self._resumed_at

        def record(value: int | None) -> None:
            self._record(PsciCall(function_id, (x1, x2, x3), stop.vcpu_index, seconds, response.action, value))

        if response.action is PsciAction.RETURN and response.value is not None:
            remote.write_register(0, to_register(response.value))
            remote.write_register(AARCH64_PC, pc + INSTRUCTION_BYTES)
            record(response.value)
            remote.resume()
            return
        if response.action is PsciAction.POWER_OFF:
            if not self.qemu_reports_off2:
                remote.write_register(0, POWER_OFF_FUNCTION)
            record(None)
            if self._step(remote, stop):
                self._hold_until_qemu_ends(remote)
            return
        value: int | None = None
        stepped = False
        try:
            stepped = self._step(remote, stop)
            if stepped:
                after = remote.read_registers()
                if after[AARCH64_PC] == pc + INSTRUCTION_BYTES and not _turned_off(function_id, after[0]):
                    value = to_signed(after[0])
        finally:
            # A SYSTEM_OFF passed through may end QEMU before the step reports; log the call anyway.
            record(value)
        if stepped:
            remote.resume()

    def _step(self, remote: GdbRemote, stop: StopReply) -> bool:
        """Let QEMU execute the conduit instruction; False if the guest did not come back (powered off).

        QEMU's single-step runs the instruction under a breakpoint without triggering it, so the
        breakpoint stays inserted for the other vCPUs.
        """
        after = remote.step(stop.thread or "0", self.request_timeout)
        if after.kind is not StopKind.SIGNAL:
            self.qemu_exited = True
            return False
        return after.code == SIGTRAP

    def _hold_until_qemu_ends(self, remote: GdbRemote) -> None:
        """Keep the VM stopped after the power-off call until QEMU exits by itself.

        QEMU's PSCI has queued the shutdown and this vCPU's own power-off by the time the step reports;
        resumed at once, the vCPU can run on before its power-off lands, read the call's x0 back as if
        it had returned and fall back to plain SYSTEM_OFF (seen once in CI). QEMU's main loop shuts down
        a stopped VM just the same. Should QEMU not end in time, the guest is resumed with what it got.
        """
        try:
            ended = remote.wait_stop(self.request_timeout, sent="QEMU's exit after the power-off")
        except WaitTimeout:
            remote.resume()
            return
        if ended.kind is not StopKind.SIGNAL:
            self.qemu_exited = True

    def _record(self, call: PsciCall) -> None:
        with self._lock:
            self._calls.append(call)
            if self.call_log is not None:
                with self.call_log.open("a") as log:
                    log.write(json.dumps(call.as_record()) + "\n")

    def _interrupt_and_detach(self, remote: GdbRemote) -> None:
        remote.interrupt()
        with contextlib.suppress(WaitTimeout):
            remote.wait_stop(_INTERRUPT_SECONDS)
        remote.detach()

    def _detach_quietly(self) -> None:
        """Best effort after a failure: a guest left at a breakpoint without us would hang forever."""
        remote = self._remote
        if remote is None:
            return
        with contextlib.suppress(ChannelError, OSError):
            remote.detach()
