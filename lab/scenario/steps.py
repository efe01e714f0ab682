"""Scenario steps: boot, mark, hibernate, poweroff, crash, alter the disk, check, run, repeat.

Steps drive machines and channels and record observations; they never judge. A guest that
misbehaves (resumes when it should not, loses its evidence) is recorded faithfully and left
to the verdict; only a broken channel or a wait that runs out stops the run.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.deadline import Deadline
from lab.disk import header as hibernation_header
from lab.errors import LabError, MachineError, SetupError
from lab.events import EventLog
from lab.image.store import GuestImage
from lab.judge.observations import (
    BootObservation,
    CheckRequest,
    CommandObservation,
    DiskOperation,
    Evidence,
    EvidenceObservation,
    Observations,
    PowerOffObservation,
)
from lab.machine.channels.shell import CommandResult, GuestShell
from lab.machine.channels.ssh import SshChannel
from lab.machine.process import Disk, Machine, MachineSpec, free_local_port
from lab.scenario.model import Scenario, Step

DEFAULT_TIMEOUTS = {"boot": 120.0, "hibernate": 180.0, "poweroff": 60.0, "crash": 60.0, "run": 60.0}
READY = re.compile(r"lab-init: ready|PM: hibernation: hibernation exit|Kernel panic")
PORT_ATTEMPTS = 3


class StepError(LabError):
    """A step could not do its work (as opposed to the guest doing something unexpected)."""

    exit_code = 1


@dataclass
class GuestPsci:
    """How the PSCI v1.3 layer is to be attached to TCG arm64 guests (None: not attached)."""

    personality: str
    attach: Callable[[Machine, Path], Any]


@dataclass
class RunContext:
    """The state a run carries from step to step."""

    scenario: Scenario
    image: GuestImage
    run_dir: Path
    events: EventLog
    accel: str
    qemu: Path | None = None
    psci: GuestPsci | None = None
    observations: Observations = field(default_factory=Observations)
    machine: Machine | None = None
    shell: GuestShell | None = None
    ssh: SshChannel | None = None
    psci_session: Any = None
    evidence: Evidence | None = None
    pending_hibernate: tuple[str, str] | None = None
    boot_count: int = 0
    disk_format: str = "raw"
    off2_contract: str = "none"

    @property
    def swap(self) -> Disk:
        return Disk(self.run_dir / f"swap.{self.disk_format}", self.disk_format)

    def prepare_disk(self, source: Path | None = None) -> None:
        """The run's own swap disk: a copy of the user's disk (format kept) or of the image's blank one."""
        origin = source or self.image.swap_template
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(origin)], capture_output=True, text=True)
        if info.returncode != 0:
            raise SetupError(f"cannot read disk {origin}: {info.stderr.strip()}")
        self.disk_format = json.loads(info.stdout)["format"]
        done = subprocess.run(
            ["qemu-img", "convert", "-O", self.disk_format, "-S", "4k", str(origin), str(self.swap.path)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise SetupError(f"cannot create the run's swap disk: {done.stderr.strip()}")

    def spec(self, ssh_port: int | None = None) -> MachineSpec:
        append = f"{self.image.kernel_append} lab.swap=vda"
        return MachineSpec(
            arch=self.image.qemu_arch, kernel=self.image.kernel, initrd=self.image.initramfs, append=append,
            disks=(self.swap,), accel=self.accel, memory_mib=self.scenario.memory_mib,
            cpus=self.scenario.cpus, qemu=self.qemu, gdbstub=self.psci is not None, ssh_port=ssh_port,
        )

    def require_shell(self, step: Step) -> GuestShell:
        if self.shell is None or self.machine is None or not self.machine.running:
            raise StepError(f"line {step.line}: `{step.kind}` needs a running guest; add a boot step before it")
        return self.shell

    def require_ssh(self, step: Step, timeout: float, outcome: dict[str, Any]) -> SshChannel:
        """The SSH channel to the running guest, connected on first use after each boot.

        Every boot is a new QEMU with a new port forward, so a channel never outlives its machine.
        """
        self.require_shell(step)
        assert self.machine is not None
        login, port = self.image.ssh, self.machine.spec.ssh_port
        if login is None or port is None:
            raise StepError(f"line {step.line}: `over: ssh` needs an image with an SSH server; {self.image.name} "
                            "has none (built before SSH, or booted with a user's initramfs)")
        if self.ssh is None:
            channel = SshChannel.from_files(port, login.user, login.host_key, login.client_key)
            channel.connect(timeout)
            self.ssh = channel
            outcome["ssh_connected"] = f"127.0.0.1:{port}"
        return self.ssh

    def close_ssh(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None

    def close_machine(self) -> None:
        """SSH first, QEMU next (its exit ends the PSCI layer's gdbstub session), then the layer."""
        try:
            self.close_ssh()
            if self.machine is not None:
                self.machine.close()
        finally:
            if self.psci_session is not None:
                self.psci_session.close()
        self.machine = self.shell = self.psci_session = None

    def console_text(self) -> str:
        if self.machine is None:
            return ""
        return "\n".join(line for _, line in self.machine.console.lines)


def _launch_once(ctx: RunContext, name: str) -> Machine:
    ssh_port = free_local_port() if ctx.image.ssh is not None else None
    ctx.machine = Machine(ctx.spec(ssh_port), ctx.run_dir, name, ctx.events.started)
    ctx.machine.launch()
    return ctx.machine


def _launch(ctx: RunContext, name: str) -> Machine:
    """Launch QEMU paused; images with an SSH server get a free port on 127.0.0.1 forwarded to the guest's.

    The port is free when chosen, but another process may bind it before QEMU does: QEMU then
    fails to start, and the launch is retried with another port.
    """
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return _launch_once(ctx, name)
        except MachineError as error:
            if "host forwarding" not in error.output:
                raise
            ctx.events.emit("ssh-port-taken", boot=name, detail=error.output.strip())
            ctx.close_machine()
    return _launch_once(ctx, name)


def _boot(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    if ctx.machine is not None:
        raise StepError(f"line {step.line}: boot while a guest is still running; power it off first")
    ctx.boot_count += 1
    name = f"boot{ctx.boot_count}"
    machine = _launch(ctx, name)
    ctx.events.emit("qemu-launched", boot=name, accel=ctx.accel)
    if ctx.psci is not None:
        ctx.psci_session = ctx.psci.attach(machine, ctx.run_dir / f"psci-{name}.jsonl")
    else:
        machine.resume()
    ctx.shell = GuestShell(machine.console)
    timeout = step.params.get("timeout", DEFAULT_TIMEOUTS["boot"])
    seen = machine.console.expect(READY.pattern, timeout, f"{name} to become ready").group(0)
    observation = BootObservation(name, "unknown", step.params.get("expect", "any"), step.line)
    if seen.startswith("lab-init"):
        observation.outcome = "fresh"
    elif seen.startswith("PM:"):
        observation.outcome = "resumed"
        if ctx.pending_hibernate is not None:
            token, command = ctx.pending_hibernate
            observation.hibernate_command_status = ctx.shell.wait(token, command, timeout).status
    else:
        observation.outcome = "panicked"
    ctx.pending_hibernate = None
    if observation.outcome != "panicked":
        ctx.shell.wait_responsive(timeout)
    ctx.observations.boots.append(observation)
    outcome.update(boot=name, outcome=observation.outcome)


def _key_values(output: str) -> dict[str, str]:
    """`key=value` lines the guest printed, as the evidence commands write them."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def _mark(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    shell = ctx.require_shell(step)
    token = secrets.token_hex(16)
    seconds = 2_000_000_000 + secrets.randbelow(100_000_000)
    output = shell.succeed(
        "mkdir -p /run/lab-evidence\n"
        f"echo {token} > /run/lab-evidence/token\n"
        f"sleep {seconds} </dev/null >/dev/null 2>&1 &\n"
        'echo "marker=$!"\n'
        'echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"\n'
    )
    fields = _key_values(output)
    ctx.evidence = Evidence(token, int(fields["marker"]), seconds, fields["boot_id"])
    outcome.update(token=token, marker_pid=ctx.evidence.marker_pid, boot_id=ctx.evidence.boot_id)


def _read_disk_header(ctx: RunContext) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return hibernation_header.read_header(ctx.swap.path).to_json(), None
    except LabError as error:
        return None, str(error)


def _power_off(ctx: RunContext, step: Step, outcome: dict[str, Any], intent: str, command: str) -> None:
    shell = ctx.require_shell(step)
    machine = ctx.machine
    assert machine is not None
    timeout = step.params.get("timeout", DEFAULT_TIMEOUTS[step.kind])
    ctx.close_ssh()
    if intent == "hibernate" and "mode" in step.params:
        shell.succeed(f"echo {step.params['mode']} > /sys/power/disk")
    token = shell.start(command)
    timed_out = False
    try:
        machine.wait_exit(timeout, f"the guest to power off after `{command}`")
    except LabError as error:
        timed_out = True
        outcome["wait_error"] = str(error)
    session = ctx.psci_session
    ctx.close_machine()
    header, disk_error = _read_disk_header(ctx)
    ctx.observations.power_offs.append(PowerOffObservation(
        boot=machine.name, intent=intent, expect=step.params.get("expect"), step_line=step.line,
        record=machine.record, timed_out=timed_out, psci_active=session is not None,
        psci_personality=ctx.psci.personality if ctx.psci else None,
        psci_calls=list(session.calls) if session is not None else [],
        disk_header=header, disk_error=disk_error, off2_contract=ctx.off2_contract,
    ))
    if intent == "hibernate":
        ctx.pending_hibernate = (token, command)
    outcome.update(exit_code=machine.record.exit_code, timed_out=timed_out,
                   image_on_disk=bool(header and header.get("image_present")))


def _hibernate(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    _power_off(ctx, step, outcome, "hibernate", "echo disk > /sys/power/state")


def _poweroff(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    _power_off(ctx, step, outcome, "poweroff", "poweroff -f")


def _crash(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    _power_off(ctx, step, outcome, "crash", "echo c > /proc/sysrq-trigger")


def _disk_operation(ctx: RunContext, step: Step, outcome: dict[str, Any], operation: str, change) -> None:
    if ctx.machine is not None:
        raise StepError(f"line {step.line}: `{step.kind}` changes the disk; power the guest off first")
    before, after = change(ctx.swap.path)
    ctx.observations.disk_operations.append(
        DiskOperation(step.line, operation, before.to_json(), after.to_json())
    )
    outcome.update(before=before.to_json(), after=after.to_json())


def _alter_signature(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    value = step.params["value"]
    _disk_operation(ctx, step, outcome, f"set-signature 0x{value:08x}",
                    lambda disk: hibernation_header.set_signature(disk, value))


def _discard_image(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    _disk_operation(ctx, step, outcome, "discard-image", hibernation_header.discard_image)


def _evidence(ctx: RunContext, shell: GuestShell, step: Step) -> EvidenceObservation:
    planted = ctx.evidence
    pid = planted.marker_pid if planted else 0
    output = shell.succeed(
        'echo "token=$(cat /run/lab-evidence/token 2>/dev/null)"\n'
        f"echo \"marker=$(tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null)\"\n"
        'echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"\n'
    )
    fields = _key_values(output)
    assert ctx.machine is not None
    return EvidenceObservation(
        step_line=step.line, boot=ctx.machine.name,
        token_found=planted is not None and fields.get("token", "") == planted.token,
        marker_alive=planted is not None and fields.get("marker", "").split() == ["sleep", str(planted.marker_seconds)],
        boot_id=fields.get("boot_id", ""), planted=planted,
    )


def _guest_swap_signature(shell: GuestShell) -> str:
    output = shell.succeed(
        "for tail in 4086 65526; do"
        " s=$(dd if=/dev/vda bs=1 skip=$tail count=10 2>/dev/null | tr -d '\\0');"
        " case $s in S1SUSPEND|SWAPSPACE2|SWAP-SPACE) echo $s; exit 0;; esac; done; echo none"
    )
    return output.strip()


def _check(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    shell = ctx.require_shell(step)
    wants = step.params
    evidence = _evidence(ctx, shell, step) if {"evidence", "boot_id"} & wants.keys() else None
    swap_signature = _guest_swap_signature(shell) if "swap_signature" in wants else None
    assert ctx.machine is not None
    ctx.observations.checks.append(CheckRequest(
        step_line=step.line, boot=ctx.machine.name, expectations=dict(wants),
        evidence=evidence, swap_signature=swap_signature, console_text=ctx.console_text(),
    ))
    if evidence is not None:
        outcome.update(token_found=evidence.token_found, marker_alive=evidence.marker_alive,
                       boot_id=evidence.boot_id)
    if swap_signature is not None:
        outcome["swap_signature"] = swap_signature


def _run(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    timeout = step.params.get("timeout", DEFAULT_TIMEOUTS["run"])
    over = step.params.get("over", "serial")
    result: CommandResult
    if over == "ssh":
        deadline = Deadline(timeout)
        channel = ctx.require_ssh(step, timeout, outcome)
        result = channel.run(step.params["command"], max(deadline.remaining, 1.0))
    else:
        result = ctx.require_shell(step).run(step.params["command"], timeout)
    assert ctx.machine is not None
    ctx.observations.commands.append(CommandObservation(
        step.line, ctx.machine.name, result.command, result.status, result.output,
        step.params.get("expect_status", 0), step.params.get("output_contains"), channel=over,
    ))
    outcome.update(status=result.status)


def _repeat(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    for round_number in range(1, step.params["times"] + 1):
        ctx.events.emit("repeat-round", round=round_number, of=step.params["times"])
        run_steps(ctx, step.children)
    outcome["rounds"] = step.params["times"]


STEPS: dict[str, Callable[[RunContext, Step, dict[str, Any]], None]] = {
    "boot": _boot,
    "mark": _mark,
    "hibernate": _hibernate,
    "poweroff": _poweroff,
    "crash": _crash,
    "alter-signature": _alter_signature,
    "discard-image": _discard_image,
    "check": _check,
    "run": _run,
    "repeat": _repeat,
}


def run_steps(ctx: RunContext, steps: tuple[Step, ...]) -> None:
    for step in steps:
        with ctx.events.step(step.kind, line=step.line, params=step.describe()) as outcome:
            STEPS[step.kind](ctx, step, outcome)
