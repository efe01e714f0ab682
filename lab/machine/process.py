"""One QEMU process: its command line built from typed settings, its lifecycle, its reaping.

A machine is launched paused (`-S`) with its channels on private unix sockets; the caller
attaches what it needs (the PSCI layer's gdbstub client, for one) and then resumes it, so
no early console output is lost. QEMU is always reaped: `close()` runs in `finally`,
and QEMU is told by the kernel to die with the lab (PR_SET_PDEATHSIG) should the lab itself
be killed.
"""

from __future__ import annotations

import ctypes
import json
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.deadline import Deadline
from lab.disk.lock import DiskLock
from lab.errors import ChannelError, MachineError, SetupError, WaitTimeout
from lab.machine.channels.qmp import QmpChannel
from lab.machine.channels.serial import SerialConsole

PR_SET_PDEATHSIG = 1
GUEST_SSH_PORT = 22


def free_local_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now (another process may take it before QEMU does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Disk:
    path: Path
    format: str = "raw"


@dataclass(frozen=True)
class MachineSpec:
    """Everything that decides a QEMU command line; nothing else does."""

    arch: str
    kernel: Path
    initrd: Path | None
    append: str
    disks: tuple[Disk, ...] = ()
    accel: str = "tcg"
    memory_mib: int = 1024
    cpus: int = 2
    qemu: Path | None = None
    gdbstub: bool = False
    ssh_port: int | None = None
    """Host port on 127.0.0.1 forwarded to the guest's port 22 over user-mode networking; None: no network."""
    keep_after_shutdown: bool = False
    """Stay alive (stopped) after the guest powers off, so its RAM can still be read over QMP."""

    @property
    def qemu_binary(self) -> str:
        if self.qemu is not None:
            return str(self.qemu)
        found = shutil.which(f"qemu-system-{self.arch}")
        if found is None:
            raise SetupError(f"qemu-system-{self.arch} not found: run ./bootstrap (installs QEMU >= 10)")
        return found

    def _machine_args(self) -> list[str]:
        if self.arch == "aarch64":
            cpu = "host" if self.accel == "kvm" else "max,pauth-impdef=on"
            return ["-machine", "virt", "-cpu", cpu]
        if self.arch == "x86_64":
            return ["-machine", "q35", "-cpu", "host" if self.accel == "kvm" else "max"]
        raise SetupError(f"no machine model for guest arch {self.arch}")

    def command(self, sockets: Path, console_log: Path) -> list[str]:
        args = [
            self.qemu_binary, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-S",
            *self._machine_args(),
            "-accel", self.accel, "-smp", str(self.cpus), "-m", str(self.memory_mib),
            "-kernel", str(self.kernel), "-append", self.append,
            "-chardev", f"socket,id=console,path={sockets / 'console.sock'},server=on,wait=off,"
                        f"logfile={console_log},logappend=off",
            "-serial", "chardev:console",
            "-chardev", f"socket,id=qmp,path={sockets / 'qmp.sock'},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
        ]
        if self.initrd is not None:
            args += ["-initrd", str(self.initrd)]
        if self.keep_after_shutdown:
            args.append("-no-shutdown")
        for index, disk in enumerate(self.disks):
            args += [
                "-blockdev", f"driver=file,filename={disk.path},node-name=file{index}",
                "-blockdev", f"driver={disk.format},file=file{index},node-name=disk{index}",
                "-device", f"virtio-blk-pci,drive=disk{index},romfile=",
            ]
        if self.gdbstub:
            args += ["-gdb", f"unix:{sockets / 'gdb.sock'},server=on,wait=off"]
        if self.ssh_port is not None:
            args += [
                "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:{GUEST_SSH_PORT}",
                "-device", "virtio-net-pci,netdev=net0,romfile=",
            ]
        return args


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class BootRecord:
    """What one QEMU process did, as seen by the VMM's channels: the raw material for witnesses."""

    name: str
    command: list[str]
    console_log: Path
    qmp_log: Path
    launched_at: float
    exit_code: int | None = None
    exited_at: float | None = None
    killed_by_lab: bool = False
    qmp_events: list[dict[str, Any]] = field(default_factory=list)
    console_lines: list[tuple[float, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": shlex.join(self.command),
            "console_log": self.console_log.name,
            "qmp_log": self.qmp_log.name,
            "launched_at": round(self.launched_at, 3),
            "exited_at": None if self.exited_at is None else round(self.exited_at, 3),
            "exit_code": self.exit_code,
            "killed_by_lab": self.killed_by_lab,
        }


class Machine:
    """A launched QEMU with its serial console and QMP attached; use as a context manager."""

    def __init__(self, spec: MachineSpec, run_dir: Path, name: str, run_started: float) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.name = name
        self.run_started = run_started
        self._sockets = Path(tempfile.mkdtemp(prefix="lab-sock-"))
        self._sockets.chmod(0o700)
        self.gdb_socket = self._sockets / "gdb.sock"
        self.record = BootRecord(
            name=name,
            command=spec.command(self._sockets, run_dir / f"console-{name}.log"),
            console_log=run_dir / f"console-{name}.log",
            qmp_log=run_dir / f"qmp-{name}.jsonl",
            launched_at=time.monotonic() - run_started,
        )
        self._stderr_path = run_dir / f"qemu-{name}.stderr"
        self._process: subprocess.Popen[bytes] | None = None
        self._locks = [DiskLock(disk.path, f"lab machine {name}") for disk in spec.disks]
        self.console = SerialConsole(self._sockets / "console.sock", run_started)
        self.qmp = QmpChannel(self._sockets / "qmp.sock", self.record.qmp_log, run_started)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _output(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def launch(self, timeout: float = 15) -> None:
        """Start QEMU paused and attach console and QMP; raises MachineError if QEMU dies."""
        for lock in self._locks:
            lock.acquire()
        (self.run_dir / f"qemu-{self.name}.cmdline").write_text(shlex.join(self.record.command) + "\n")
        with self._stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                self.record.command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                preexec_fn=_die_with_parent,
            )
        self.record.launched_at = time.monotonic() - self.run_started
        deadline = Deadline(timeout)
        process = self._process
        try:
            self.qmp.connect(deadline.remaining, peer_gone=lambda: process.poll() is not None)
            self.console.connect(deadline.remaining)
        except (WaitTimeout, ChannelError) as error:
            if process.poll() is None:
                raise
            raise MachineError(
                f"QEMU exited with status {process.returncode} at start", self.record.command, self._output()
            ) from error

    def resume(self) -> None:
        self.qmp.execute("cont")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_exit(self, timeout: float, what: str = "QEMU to exit") -> int:
        """Wait for QEMU to exit by itself, reading the console meanwhile."""
        deadline = Deadline(timeout)
        try:
            self.console.drain_until_closed(deadline.remaining, what)
        except WaitTimeout:
            if self.running:
                raise
        assert self._process is not None
        try:
            code = self._process.wait(max(deadline.remaining, 1.0))
        except subprocess.TimeoutExpired:
            raise WaitTimeout(what, timeout, self.console.last_lines()) from None
        self._note_exit(code)
        return code

    def _note_exit(self, code: int) -> None:
        if self.record.exit_code is None:
            self.record.exit_code = code
            self.record.exited_at = time.monotonic() - self.run_started

    def close(self) -> None:
        """Reap QEMU whatever state it is in; console first, then QEMU, then QMP."""
        try:
            self.console.close()
            if self._process is not None and self._process.poll() is None:
                self.record.killed_by_lab = True
                self._process.terminate()
                try:
                    self._process.wait(5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(5)
            if self._process is not None:
                self._note_exit(self._process.returncode)
        finally:
            self.qmp.close()
            self.record.qmp_events = list(self.qmp.events)
            self.record.console_lines = list(self.console.lines)
            (self.run_dir / f"boot-{self.name}.json").write_text(json.dumps(self.record.to_json(), indent=2))
            for lock in reversed(self._locks):
                lock.release()
            shutil.rmtree(self._sockets, ignore_errors=True)
