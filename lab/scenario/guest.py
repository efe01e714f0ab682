"""One guest across its boots: the machine, its channels and its PSCI session, in named states.

A scenario's guest outlives any QEMU process: it hibernates in one and resumes in the next, on
the same swap disk. `Guest` owns whatever is alive now and names the state the guest is in, so
a step asks for a state instead of checking which of a dozen fields happen to be set:

    OFF --boot--> RUNNING --poweroff, crash--> OFF
                   |   ^
          hibernate|   |boot (resumes the image)
                   v   |
                HIBERNATED

Leaving any state through `close()` stops QEMU (softly first) and ends the PSCI session.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from lab.deadline import Deadline
from lab.errors import ChannelError, KernelTrouble, LabError, MachineError
from lab.events import EventLog, PortTaken, QemuLaunched
from lab.hosts.base import Host
from lab.hosts.local import LOCAL
from lab.hosts.trace import KvmTrace
from lab.image.guest_image import GuestImage, SwapArea
from lab.machine.channels.serial import TROUBLE_QUIET_SECONDS
from lab.machine.channels.shell import CommandResult, GuestShell
from lab.machine.channels.ssh import SshChannel
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec, Uefi, free_local_port, with_console
from lab.psci.attach import GuestPsci, PsciSession
from lab.qemu.builds import QemuBuild
from lab.rundir import BootRecord, RunDirectory
from lab.scenario.run_files import RunFiles
from lab.vocabulary import CONSOLE_PATTERNS, BootKind, ConsoleMark, Intent, PowerOffClass

PORT_ATTEMPTS = 3
PORT_TAKEN = re.compile(r"host forwarding|Address already in use")
"""QEMU's words when a port it was to listen on is taken: the launch is retried with other ports."""
BOOT_ENDINGS = (ConsoleMark.READY, ConsoleMark.RESUMED, ConsoleMark.PANIC)
"""What ends a boot's wait: init is ready, the kernel resumed an image, or the kernel panicked."""
_BOOT_ENDED = "|".join(f"(?P<{mark}>{CONSOLE_PATTERNS[mark].pattern})" for mark in BOOT_ENDINGS)
_BOOT_OUTCOMES = {ConsoleMark.READY: BootKind.FRESH, ConsoleMark.RESUMED: BootKind.RESUMED,
                  ConsoleMark.PANIC: BootKind.PANICKED}


class GuestState(StrEnum):
    OFF = "off"
    """No QEMU runs; the disk holds no image the lab put the guest up to writing."""
    RUNNING = "running"
    """QEMU runs and the guest's shell answered (or its kernel panicked while booting)."""
    HIBERNATED = "hibernated"
    """No QEMU runs; the guest wrote an image, and the shell command that hibernated it waits for the resume."""


class GuestStateError(LabError):
    """A step asked the guest for something its state does not allow (a scenario mistake)."""

    exit_code = 1


@dataclass(frozen=True)
class BootOutcome:
    name: str
    outcome: BootKind
    hibernate_command_status: int | None = None
    """After a resume: the exit status of the `echo disk` that hibernated the guest."""


@dataclass(frozen=True, kw_only=True)
class PowerOff:
    """What one power-off left: the boot's record, whether the lab stopped waiting, the PSCI calls."""

    record: BootRecord
    wait_error: str | None
    """Why the lab stopped waiting for QEMU to exit; None when it exited."""
    psci_active: bool
    psci_calls: list[dict[str, Any]]
    host_hvc_calls: list[dict[str, Any]] | None
    """What the host kernel traced of the guest's HVCs (KVM), or None when nothing traced them."""
    gave_up: CommandResult | None
    """The power-off command's result when it returned with the guest still running; None when it never did."""
    console: str
    """The guest's console device (`uart`, `virtio`): a virtio console is gone before the kernel's last line."""
    kernel_trouble: str | None = None
    """The panic, Oops or BUG line after which the console fell silent and the lab stopped waiting."""

    @property
    def timed_out(self) -> bool:
        return self.wait_error is not None


class Guest:
    """The guest of one run; see the module docstring for its states."""

    def __init__(self, image: GuestImage, run_dir: RunDirectory, events: EventLog, accel: str,
                 build: QemuBuild, psci: GuestPsci | None = None, memory_mib: int = 1024, cpus: int = 2,
                 host: Host = LOCAL, trouble_quiet: float = TROUBLE_QUIET_SECONDS, swap_area: SwapArea | None = None,
                 boot_append: str = "lab.swap=vda", uefi: bool = False) -> None:
        self.image = image
        self.swap_area = swap_area or image.swap_area()
        """Where the guest writes its hibernation image, in the run's disk and in the guest."""
        self.boot_append = boot_append
        """What every boot adds to the image's kernel command line (the swap area, resume=, a compressor)."""
        self.run_dir = run_dir
        self.events = events
        self.accel = accel
        self.build = build
        self.psci = psci
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.host = host
        self.trouble_quiet = trouble_quiet
        """Seconds of console silence after a kernel panic, Oops or BUG that end any wait on the guest
        (stretched by the host's patience, as the steps' timeouts are)."""
        self.trace_kvm = accel == "kvm" and image.qemu_arch == "aarch64"
        self.state = GuestState.OFF
        self.files = RunFiles(image, run_dir, host, uefi)
        self.machine: Machine | None = None
        self.shell: GuestShell | None = None
        self.psci_session: PsciSession | None = None
        self.boot_count = 0
        self._ssh: SshChannel | None = None
        self._trace: KvmTrace | None = None
        self._pending: tuple[str, str] | None = None

    def prepare_disk(self, source: Path | None = None) -> None:
        """The run's own disk, from the user's disk or the image's (see RunFiles.prepare_disk)."""
        self.files.prepare_disk(source, self.command_line())

    def command_line(self) -> str:
        """The kernel command line of every boot: the image's, on the console device this accelerator gets,
        with what the run adds (the swap area, resume=, a compressor), and the user's --append last: the
        kernel takes the last of a repeated argument, so a `resume_offset=` given by hand is the one used."""
        words = (self.image.manifest["kernel_append"], self.boot_append, self.image.extra_append)
        return with_console(" ".join(filter(None, words)), self.image.qemu_arch, self.console_device)

    @property
    def console_device(self) -> str:
        """A KVM guest gets a virtio console: on the UART every character is an exit to the VMM, which on a
        nested KVM host costs a minute of boot log."""
        return "virtio" if self.accel == "kvm" else "uart"

    def collect(self) -> None:
        """Bring the run's disk (and variable store) home from a lab host."""
        self.files.collect()

    @property
    def disk(self) -> Disk:
        return self.files.disk

    @property
    def uefi(self) -> Uefi | None:
        return self.files.uefi

    @property
    def boot_name(self) -> str:
        """The name of the current (or last) boot: `boot1`, `boot2`, …"""
        return f"boot{self.boot_count}"

    def spec(self, ssh_port: int | None = None) -> MachineSpec:
        """The machine of the next boot."""
        return MachineSpec(
            arch=self.image.qemu_arch, kernel=Path(self.files.host_file(self.image.kernel)),
            initrd=Path(self.files.host_file(self.image.initramfs)), append=self.command_line(),
            disks=(self.disk,), accel=self.accel, memory_mib=self.memory_mib, cpus=self.cpus, qemu=self.build.path,
            loader=self.build.loader, gdbstub=self.psci is not None, ssh_port=ssh_port, console=self.console_device,
            uefi=self.uefi,
        )

    def require(self, *states: GuestState, doing: str) -> None:
        if self.state not in states:
            wanted = " or ".join(states)
            raise GuestStateError(f"`{doing}` needs the guest {wanted}, but it is {self.state}")

    def running_shell(self, doing: str) -> GuestShell:
        self.require(GuestState.RUNNING, doing=doing)
        if self.shell is None:
            raise GuestStateError(f"`{doing}`: the guest is {self.state} but has no shell")
        return self.shell

    @property
    def _booted(self) -> Machine:
        """The QEMU of the current boot; raises rather than hand out None between boots."""
        if self.machine is None:
            raise GuestStateError(f"the guest is {self.state} and has no QEMU")
        return self.machine

    def boot(self, timeout: float) -> BootOutcome:
        """Launch QEMU on the run's disk and wait until the guest is up, fresh or resumed."""
        self.require(GuestState.OFF, GuestState.HIBERNATED, doing="boot")
        self.boot_count += 1
        name = self.boot_name
        machine = self._launch(name)
        self.events.emit(QemuLaunched, boot=name, accel=self.accel)
        if self.trace_kvm and machine.pid is not None:
            self._trace = KvmTrace(self.host)
            self._trace.start(machine.pid)
        if self.psci is not None:
            self.psci_session = self.psci.attach(machine, self.run_dir.boot(name).psci)
        else:
            machine.resume()
        self.shell = shell = GuestShell(machine.console, self.host.patience)
        self.state = GuestState.RUNNING
        match = machine.console.expect(_BOOT_ENDED, timeout, f"{name} to become ready")
        outcome = _BOOT_OUTCOMES[ConsoleMark(match.lastgroup or "")]
        status = None
        if outcome is BootKind.RESUMED and self._pending is not None:
            token, command = self._pending
            status = shell.wait(token, command, timeout).status
        self._pending = None
        if outcome is not BootKind.PANICKED:
            shell.wait_responsive(timeout)
        return BootOutcome(name, outcome, status)

    def _launch(self, name: str) -> Machine:
        """Launch QEMU paused; images with an SSH server get a free port on 127.0.0.1 forwarded to the guest's.

        The port is free when chosen, but another process may bind it before QEMU does: QEMU then
        fails to start, and the launch is retried with another port.
        """
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._launch_once(name)
            except MachineError as error:
                if not PORT_TAKEN.search(error.output):
                    raise
                self.events.emit(PortTaken, boot=name, detail=error.output.strip())
        return self._launch_once(name)

    def _launch_once(self, name: str) -> Machine:
        port = self._free_port() if self.image.ssh is not None else None
        machine = Machine(self.spec(port), self.run_dir.boot(name), self.events.started, self.host,
                          self.trouble_quiet * self.host.patience)
        machine.launch()
        self.machine = machine
        return machine

    def _free_port(self) -> int:
        """A port for the guest's SSH forward on the host's loopback (taken ones make QEMU fail, and retry)."""
        return free_local_port() if self.host is LOCAL else secrets.SystemRandom().randrange(20000, 60000)

    def ssh(self, timeout: float) -> tuple[SshChannel, bool]:
        """The SSH channel to the running guest, and whether it was connected just now.

        Every boot is a new QEMU with a new port forward, so a channel never outlives its machine.
        """
        self.require(GuestState.RUNNING, doing="run over ssh")
        login, port = self.image.ssh, self._booted.spec.ssh_port
        if login is None or port is None:
            raise GuestStateError(f"`over: ssh` needs an image with an SSH server; {self.image.name} has none "
                                  "(built before SSH, or booted with a user's initramfs)")
        if self._ssh is not None:
            return self._ssh, False
        channel = SshChannel.from_files(self.host.tcp_channel(port), login.user, login.host_key, login.client_key)
        channel.connect(timeout)
        self._ssh = channel
        return channel, True

    def power_off(self, command: str, intent: Intent, timeout: float, mode: str | None = None) -> PowerOff:
        """Have the guest run `command` (hibernate, poweroff, crash) and wait for QEMU to exit.

        A command that returns instead (hibernation refused: too little swap, say) means the guest gave
        up and runs on: the wait ends there, with the command's status, not at the timeout. A kernel
        panic, Oops or BUG followed by silence ends it too (the guest crashed and hangs), except after
        `crash`, whose panic is the point: QEMU's exit is awaited.
        """
        shell = self.running_shell(intent)
        machine = self._booted
        self._close_ssh()
        if mode is not None:
            shell.succeed(f"echo {mode} > /sys/power/disk")
        deadline = Deadline(timeout)
        token = shell.start(command)
        wait_error = None
        trouble: str | None = None
        gave_up: CommandResult | None = None
        with contextlib.ExitStack() as waits:
            if intent is Intent.CRASH:
                waits.enter_context(machine.console.expecting_trouble())
            try:
                try:
                    gave_up = shell.wait(token, command, deadline.remaining)
                except ChannelError:
                    machine.wait_exit(max(deadline.remaining, 1.0), f"QEMU to exit after `{command}`")
            except KernelTrouble as error:
                wait_error, trouble = str(error), error.line
            except LabError as error:
                wait_error = str(error)
        session = self.psci_session
        hvc_calls = [call.as_record() for call in self._trace.read()] if self._trace is not None else None
        self.close()
        if intent is Intent.HIBERNATE and gave_up is None:
            self._pending = (token, command)
            self.state = GuestState.HIBERNATED
        return PowerOff(record=machine.record, wait_error=wait_error, psci_active=session is not None,
                        psci_calls=list(session.calls) if session is not None else [], host_hvc_calls=hvc_calls,
                        gave_up=gave_up, console=machine.spec.console, kernel_trouble=trouble)

    def vmm_fault(self) -> tuple[PowerOffClass, str] | None:
        """What is wrong with QEMU itself (died: vmm-crash; stopped: vmm-hang), to name a step's failure by
        its real cause."""
        return self.machine.classified_fault() if self.machine is not None else None

    def console_text(self) -> str:
        if self.machine is None:
            return ""
        return "\n".join(line for _, line in self.machine.console.lines)

    def _close_ssh(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None

    def close(self) -> None:
        """SSH first, QEMU next (its exit ends the PSCI layer's gdbstub session), then the layer."""
        try:
            self._close_ssh()
            if self.machine is not None:
                self.machine.close()
        finally:
            if self.psci_session is not None:
                self.psci_session.close()
            if self._trace is not None:
                self._trace.close()
            self.machine = self.shell = self.psci_session = self._trace = None
            self.state = GuestState.OFF
