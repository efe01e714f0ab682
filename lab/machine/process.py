"""One QEMU process: launched from a typed spec, its channels attached, always reaped.

A machine is launched paused (`-S`) with its channels on private unix sockets; the caller
attaches what it needs (the PSCI layer's gdbstub client, for one) and then resumes it, so
no early console output is lost. `launch` cleans up after its own failure and raises
MachineError with QEMU's output. `close` stops QEMU softly (QMP `quit`) before it signals it,
and always runs its cleanup. QEMU is told by the kernel to die with the lab
(PR_SET_PDEATHSIG) should the lab itself be killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import time
from pathlib import Path

from lab.deadline import Deadline
from lab.disk.lock import DiskLock
from lab.errors import ChannelError, MachineError, SetupError, WaitTimeout
from lab.hosts.base import Host, HostProcess
from lab.hosts.local import LOCAL
from lab.machine.channels.qmp import QmpChannel
from lab.machine.channels.serial import TROUBLE_QUIET_SECONDS, SerialConsole
from lab.machine.spec import CHANNELS, MachineSpec
from lab.rundir import BootFiles, BootRecord, describe_exit
from lab.vocabulary import PowerOffClass

_log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
SOFT_STOP_SECONDS = 3.0
"""How long QEMU gets to exit after QMP `quit` before it is sent SIGTERM."""
SIGNAL_WAIT_SECONDS = 5.0


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send `signum` to this process when the thread that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def die_with_parent() -> None:
    """For Host.start: every QEMU the lab starts dies with the lab (SIGKILL when its parent goes)."""
    set_parent_death_signal(signal.SIGKILL)


class Machine:
    """A launched QEMU with its serial console and QMP attached; use as a context manager.

    QEMU runs on `host` (this machine unless a lab host was given); its channels and console log
    live where the host puts them, and reach the lab through the host's endpoints. `trouble_quiet`
    is how long the console may stay silent after kernel trouble before a wait on it fails
    (SerialConsole; None: waits run to their timeouts).
    """

    def __init__(self, spec: MachineSpec, files: BootFiles, run_started: float, host: Host = LOCAL,
                 trouble_quiet: float | None = TROUBLE_QUIET_SECONDS) -> None:
        self.spec = spec.resolved()
        self.files = files
        self.name = files.name
        self.run_started = run_started
        self.host = host
        self.endpoints = host.endpoints(CHANNELS, prefix=f"lab-sock-{self.name}-")
        try:
            self.gdb_socket = self.endpoints.local("gdb")
            self.record = BootRecord(
                name=self.name,
                command=self.spec.command(self.endpoints.chardevs(), self.endpoints.host_file(files.console)),
                console_log=files.console,
                qmp_log=files.qmp,
                launched_at=time.monotonic() - run_started,
            )
            self._process: HostProcess | None = None
            self._locks = [DiskLock(disk.path, f"lab machine {self.name}") for disk in self.spec.disks] \
                if host is LOCAL else []
            self.console = SerialConsole(self.endpoints.local("console"), run_started, trouble_quiet)
            self.console.vmm_fault = self._silent_console_fault
            self.qmp = QmpChannel(self.endpoints.local("qmp"), files.qmp, run_started)
        except BaseException:
            self.endpoints.close()
            raise

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def launch(self, timeout: float | None = None) -> None:
        """Start QEMU paused and attach console and QMP (within the host's launch time unless `timeout`
        is given); on any failure QEMU is reaped first.

        Raises MachineError (with QEMU's output) when QEMU dies while starting.
        """
        try:
            self._start(self.host.launch_seconds if timeout is None else timeout)
        except BaseException as error:
            process = self._process
            self.close()
            if process is not None and isinstance(error, (WaitTimeout, ChannelError)) \
                    and not self.record.killed_by_lab:
                raise MachineError(f"QEMU exited with status {process.returncode} at start",
                                   self.record.command, self.files.read_stderr()) from error
            raise

    def _start(self, timeout: float) -> None:
        for lock in self._locks:
            lock.acquire()
        self.files.write_machine({**self.spec.to_json(), "host": self.host.name}, self.record.command)
        self._process = self.host.start(self.record.command, self.files.stderr, setup=die_with_parent)
        _log.debug("%s: QEMU pid %s started on %s: %s", self.name, self._process.pid, self.host.name,
                   " ".join(self.record.command))
        self.record.launched_at = time.monotonic() - self.run_started
        deadline = Deadline(timeout)
        process = self._process
        self.qmp.connect(deadline.remaining, peer_gone=lambda: process.poll() is not None)
        self.console.connect(deadline.remaining)

    def resume(self) -> None:
        self.qmp.execute("cont")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def _launched(self) -> HostProcess:
        """QEMU's process; raises rather than hand out None before launch()."""
        if self._process is None:
            raise MachineError(f"machine {self.name} used before launch()", self.record.command, "")
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def wait_exit(self, timeout: float, what: str = "QEMU to exit") -> int:
        """Wait for QEMU to exit by itself, reading the console meanwhile."""
        deadline = Deadline(timeout)
        try:
            self.console.drain_until_closed(deadline.remaining, what)
        except WaitTimeout:
            if self.running:
                raise
        try:
            code = self._launched.wait(max(deadline.remaining, 1.0))
        except subprocess.TimeoutExpired:
            raise WaitTimeout(what, timeout, self.console.last_lines()) from None
        self._note_exit(code)
        return code

    def _note_exit(self, code: int) -> None:
        if self.record.exit_code is None:
            self.record.exit_code = code
            self.record.exited_at = time.monotonic() - self.run_started

    def _is_stopped(self, pid: int) -> bool:
        """Whether QEMU sits in the stopped state (SIGSTOP), running nothing; a lost host tells nothing."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text() if self.host is LOCAL else \
                self.host.run(["cat", f"/proc/{pid}/stat"], timeout=10).text()
        except (OSError, ChannelError, SetupError, WaitTimeout):
            return False
        fields = stat.rsplit(")", 1)[-1].split()
        return bool(fields) and fields[0] in ("T", "t")

    def fault(self) -> str | None:
        """What is wrong with QEMU itself, if anything: it died on its own, or it is stopped."""
        found = self.classified_fault()
        return found[1] if found is not None else None

    def classified_fault(self) -> tuple[PowerOffClass, str] | None:
        """`fault()` with its class: QEMU that died on its own is `vmm-crash`; one that is stopped, or has
        paused its guest, is `vmm-hang`."""
        process = self._process
        if process is None:
            return None
        code = process.poll()
        if code is not None and not self.record.killed_by_lab:
            return PowerOffClass.VMM_CRASH, f"QEMU {describe_exit(code)}"
        if code is None and self._is_stopped(process.pid):
            return PowerOffClass.VMM_HANG, "QEMU is stopped (SIGSTOP) and runs nothing"
        if code is None and (io_error := next((e for e in self.qmp.events if e["event"] == "BLOCK_IO_ERROR"), None)):
            data = io_error.get("data", {})
            why = "no space left on its disk" if data.get("nospace") else data.get("reason", "an I/O error")
            return PowerOffClass.VMM_HANG, f"QEMU paused the guest on a disk write error ({why})"
        return None

    def _silent_console_fault(self) -> str | None:
        """`fault()` as a silent console sees it: a QEMU that exited cleanly is not at fault (its console's
        end is on the way)."""
        process = self._process
        if process is not None and process.poll() == 0:
            return None
        return self.fault()

    def _stop(self, process: HostProcess) -> None:
        """Soft first (QMP `quit` lets QEMU flush and exit by itself), then SIGTERM, then SIGKILL."""
        asked = self.qmp.connected
        if asked:
            with contextlib.suppress(ChannelError):
                self.qmp.execute("quit", timeout=SOFT_STOP_SECONDS)
        for stop in ((None,) if asked else ()) + (process.terminate, process.kill):
            if stop is not None:
                _log.debug("%s: QEMU pid %s still running: %s", self.name, process.pid, stop.__name__)
                stop()
            try:
                process.wait(SOFT_STOP_SECONDS if stop is None else SIGNAL_WAIT_SECONDS)
                return
            except subprocess.TimeoutExpired:
                continue

    def close(self) -> None:
        """Reap QEMU whatever state it is in; console first (no deadlock on a full socket), then
        QEMU, then QMP. Safe to call twice."""
        try:
            self.console.close()
            process = self._process
            if process is not None and process.poll() is None:
                self.record.vmm_stopped = self._is_stopped(process.pid)
                self.record.killed_by_lab = True
                self._stop(process)
            if process is not None and process.returncode is not None:
                self._note_exit(process.returncode)
                _log.debug("%s: QEMU pid %s reaped: %s", self.name, process.pid, describe_exit(process.returncode))
        finally:
            self.qmp.close()
            self.record.qmp_events = list(self.qmp.events)
            self.record.console_lines = list(self.console.lines)
            if self._process is not None:
                self.endpoints.collect(self.files.console)
                self.files.write_record(self.record)
            for lock in reversed(self._locks):
                lock.release()
            self.endpoints.close()
