"""Scenario steps: boot, mark, hibernate, poweroff, crash, alter the disk, check, run, repeat.

Steps drive the guest and record observations; they never judge. A guest that misbehaves
(resumes when it should not, loses its evidence) is recorded faithfully and left to the
verdict; only a broken channel or a wait that runs out stops the run. As each step ends, its
own expectations are judged by the verdict's rules (`step_expectations`) so the terminal can
mark it ✗ at once.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.deadline import Deadline
from lab.disk import header as hibernation_header
from lab.disk.header import HibernationHeader
from lab.disk.qemu_tools import SwapRegion
from lab.errors import ChannelError, KernelTrouble, LabError, WaitTimeout
from lab.events import EventLog, RepeatRound
from lab.hosts.base import Host
from lab.judge.observations import (
    BootObservation,
    CheckRequest,
    CommandObservation,
    DiskOperation,
    Evidence,
    EvidenceObservation,
    KernelTroubleObservation,
    Observations,
    PowerOffObservation,
    VmmFaultObservation,
)
from lab.judge.verdict import classify, step_expectations
from lab.machine.channels.shell import CommandResult, GuestShell
from lab.scenario.endurance import keep_awake, run_rounds
from lab.scenario.guest import Guest, GuestState
from lab.scenario.model import HibernationPaths, Scenario, Step
from lab.scenario.pm_knobs import NO_PM_TEST, enable_print_times, set_pm_test
from lab.vocabulary import HibernateVia, Intent, PowerOffClass, guest_arch

DEFAULT_TIMEOUTS = {"boot": 120.0, "hibernate": 180.0, "poweroff": 60.0, "crash": 60.0, "run": 60.0}
VMM_FAULT_SETTLE_SECONDS = 2.0
"""How long a failed step waits for QEMU's exit to show before it puts the failure down to the guest."""
POWER_OFF_COMMANDS = {
    Intent.POWEROFF: "poweroff -f",
    Intent.CRASH: "echo c > /proc/sysrq-trigger",
}
SYSTEMD_SLEEP_SECONDS = 200
"""Guest uptime from `systemctl hibernate` to giving up on systemd-sleep: hibernation, time powered off,
the resume, and systemd-sleep's post hooks, on a loaded machine."""
SYSTEMD_SLEEP_UNFINISHED = 124
HIBERNATE_SYSFS = "echo disk > /sys/power/state"


def _systemd_hibernate(limit: int) -> str:
    """`systemctl hibernate`, with the hibernation's outcome as the command's status.

    systemd-sleep reads the swap device's filesystem UUID from udev's database, which a TCG guest's udev may
    still be filling when the system is up ("Failed to get filesystem UUID for device"): the command waits
    for udev first. `systemctl hibernate` returns once logind has accepted, before systemd-hibernate.service
    runs (the job may not even be queued yet): the command then waits for the journal to say that the unit
    ended, after the resume or on its refusal, and exits 0 when it succeeded, else with systemd-sleep's
    status. The unit's own properties cannot say so: systemd unloads an inactive static unit that nothing
    references, and its ExecMain* and InvocationID read as never run again (a poll that came too late on a
    loaded machine waited forever). Should the unit not end within `limit` seconds of guest uptime (which
    counts the time spent hibernated too), the command says what systemd and the processes that might hold
    it were doing, and exits SYSTEMD_SLEEP_UNFINISHED, well inside the step's timeout.
    """
    return (
        "udevadm settle --timeout=120 || exit $?\n"
        "unit=systemd-hibernate.service\n"
        "ends() {\n"
        "    timeout 20 journalctl -b -q -o cat -u $unit | grep -E ': (Deactivated successfully|Failed with result)'\n"
        "}\n"
        "before=$(ends | wc -l)\n"
        "started=$(cut -d. -f1 /proc/uptime)\n"
        "systemctl hibernate || exit $?\n"
        'while [ "$(ends | wc -l)" -le "$before" ]; do\n'
        f"    if [ $(($(cut -d. -f1 /proc/uptime) - started)) -gt {limit} ]; then\n"
        f'        echo "lab-system: $unit not finished {limit}s after systemctl hibernate"\n'
        "        timeout 20 systemctl status --no-pager --lines=15 $unit\n"
        "        timeout 20 systemctl list-jobs --no-pager\n"
        "        ps -eo pid,stat,wchan:32,args | grep -E ' D|sleep|hibernate|systemctl|efi' | grep -v grep\n"
        f"        exit {SYSTEMD_SLEEP_UNFINISHED}\n"
        "    fi\n"
        "    sleep 0.5\n"
        "done\n"
        "ends | tail -n 1 | grep -q 'Deactivated successfully' && exit 0\n"
        "status=$(journalctl -b -q -o cat -u $unit | grep -o 'status=[0-9]*' | tail -n 1)\n"
        "status=${status#status=}\n"
        'exit "${status:-1}"\n'
    )


def hibernate_command(paths: HibernationPaths, patience: float = 1.0) -> str:
    """How the guest hibernates. systemd's limit is SYSTEMD_SLEEP_SECONDS stretched by the host's `patience`,
    as the steps' timeouts are: a guest of an emulated KVM host hibernates and resumes several times slower."""
    command = (HIBERNATE_SYSFS if paths.via is HibernateVia.SYSFS
               else _systemd_hibernate(round(SYSTEMD_SLEEP_SECONDS * patience)))
    return command if paths.image_size is None else f"echo {paths.image_size} > /sys/power/image_size && {command}"


@dataclass
class RunContext:
    """What a run carries from step to step: the guest, what was seen, and what was planted."""

    scenario: Scenario
    guest: Guest
    events: EventLog
    off2_contract: str = "none"
    observations: Observations = field(default_factory=Observations)
    evidence: Evidence | None = None
    pm_test: str | None = None
    """The /sys/power/pm_test level the lab last chose in the running guest (it lasts until a new boot)."""


def _timeout(step: Step, ctx: RunContext) -> float:
    """The step's timeout, stretched by the host's patience (an emulated KVM host is slower)."""
    return float(step.params.get("timeout", DEFAULT_TIMEOUTS[step.kind])) * ctx.guest.host.patience


def _boot(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    booted = ctx.guest.boot(_timeout(step, ctx))
    if booted.outcome != "resumed":
        ctx.pm_test = None
    ctx.observations.boots.append(BootObservation(
        booted.name, booted.outcome, step.params.get("expect", "any"), step.line,
        hibernate_command_status=booted.hibernate_command_status,
    ))
    outcome.update(boot=booted.name, outcome=booted.outcome)


def _key_values(output: str) -> dict[str, str]:
    """`key=value` lines the guest printed, as the evidence commands write them."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def _mark(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    shell = ctx.guest.running_shell("mark")
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


def _swap_region(ctx: RunContext) -> SwapRegion | None:
    """Where the guest's swap area lies in the run's disk; None: the whole disk is the swap area."""
    area = ctx.guest.swap_area
    return None if area.size is None else SwapRegion(offset=area.disk_offset, size=area.size)


def _read_disk_header(ctx: RunContext) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return hibernation_header.read_header(ctx.guest.disk.path, ctx.guest.host, _swap_region(ctx)).to_json(), None
    except LabError as error:
        return None, str(error)


def _prepare_hibernation(ctx: RunContext, step: Step) -> str | None:
    """Turn the kernel's PM timing and pm_test level on as the step asks; returns what the kernel only tries."""
    shell = ctx.guest.running_shell(step.kind)
    if ctx.scenario.pm_debug:
        enable_print_times(shell)
    level = step.params.get("pm_test", ctx.scenario.pm_test)
    if level is None and ctx.pm_test not in (None, NO_PM_TEST):
        level = NO_PM_TEST
    if level is not None and level != ctx.pm_test:
        set_pm_test(shell, level)
        ctx.pm_test = level
    if level not in (None, NO_PM_TEST):
        return f"pm_test={level}"
    return "test_resume" if step.params.get("mode") == "test_resume" else None


def _power_off(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    guest = ctx.guest
    intent = Intent(step.kind)
    trial = _prepare_hibernation(ctx, step) if intent is Intent.HIBERNATE else None
    command = (hibernate_command(ctx.scenario.hibernation, guest.host.patience) if intent is Intent.HIBERNATE
               else POWER_OFF_COMMANDS[intent])
    ended = guest.power_off(command, intent, _timeout(step, ctx), step.params.get("mode"))
    header, disk_error = _read_disk_header(ctx)
    ctx.observations.power_offs.append(PowerOffObservation(
        boot=ended.record.name, intent=intent, expect=step.params.get("expect"), step_line=step.line,
        record=ended.record, timed_out=ended.timed_out, psci_active=ended.psci_active,
        psci_personality=guest.psci.personality if guest.psci else None, psci_calls=ended.psci_calls,
        disk_header=header, disk_error=disk_error, off2_contract=ctx.off2_contract,
        host_hvc_calls=ended.host_hvc_calls, console=ended.console, kernel_trouble=ended.kernel_trouble,
        command_status=ended.gave_up.status if ended.gave_up else None,
        command_output=ended.gave_up.output if ended.gave_up else "", trial=trial,
        power_interface=guest_arch(guest.image.arch).power_interface,
    ))
    if ended.wait_error is not None:
        outcome["wait_error"] = ended.wait_error
    outcome.update(exit_code=ended.record.exit_code, timed_out=ended.timed_out,
                   image_on_disk=bool(header and header.get("image_present")))


DiskChange = Callable[[Path, Host, SwapRegion | None], tuple[HibernationHeader, HibernationHeader]]
"""A change to the swap disk's header on the host: (header before, header after)."""


def _disk_operation(ctx: RunContext, step: Step, outcome: dict[str, Any], operation: str, change: DiskChange) -> None:
    ctx.guest.require(GuestState.OFF, GuestState.HIBERNATED, doing=step.kind)
    before, after = change(ctx.guest.disk.path, ctx.guest.host, _swap_region(ctx))
    ctx.observations.disk_operations.append(DiskOperation(step.line, operation, before.to_json(), after.to_json()))
    outcome.update(before=before.to_json(), after=after.to_json())


def _alter_signature(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    value = step.params["value"]
    _disk_operation(ctx, step, outcome, f"set-signature 0x{value:08x}",
                    lambda disk, host, region: hibernation_header.set_signature(disk, value, host, region))


def _discard_image(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    _disk_operation(ctx, step, outcome, "discard-image", hibernation_header.discard_image)


def _evidence(ctx: RunContext, shell: GuestShell, step: Step, boot: str) -> EvidenceObservation:
    planted = ctx.evidence
    pid = planted.marker_pid if planted else 0
    output = shell.succeed(
        'echo "token=$(cat /run/lab-evidence/token 2>/dev/null)"\n'
        f"echo \"marker=$(tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null)\"\n"
        'echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"\n'
    )
    fields = _key_values(output)
    return EvidenceObservation(
        step_line=step.line, boot=boot,
        token_found=planted is not None and fields.get("token", "") == planted.token,
        marker_alive=planted is not None and fields.get("marker", "").split() == ["sleep", str(planted.marker_seconds)],
        boot_id=fields.get("boot_id", ""), planted=planted,
    )


def _guest_swap_signature(shell: GuestShell, device: str, offset: int) -> str:
    """The signature as the guest reads it from its swap area's block device (not through a file's page
    cache, which may predate what the kernel wrote around the image)."""
    output = shell.succeed(
        "for tail in 4086 65526; do"
        f" s=$(dd if={device} bs=1 skip=$(({offset} + tail)) count=10 2>/dev/null | tr -d '\\0');"
        " case $s in S1SUSPEND|SWAPSPACE2|SWAP-SPACE) echo $s; exit 0;; esac; done; echo none"
    )
    return output.strip()


def _check(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    shell = ctx.guest.running_shell("check")
    boot = ctx.guest.boot_name
    wants = step.params
    evidence = _evidence(ctx, shell, step, boot) if {"evidence", "boot_id"} & wants.keys() else None
    area = ctx.guest.swap_area
    swap_signature = _guest_swap_signature(shell, area.guest_device, area.guest_offset) \
        if "swap_signature" in wants else None
    ctx.observations.checks.append(CheckRequest(
        step_line=step.line, boot=boot, expectations=dict(wants),
        evidence=evidence, swap_signature=swap_signature, console_text=ctx.guest.console_text(),
    ))
    if evidence is not None:
        outcome.update(token_found=evidence.token_found, marker_alive=evidence.marker_alive,
                       boot_id=evidence.boot_id)
    if swap_signature is not None:
        outcome["swap_signature"] = swap_signature


def _run(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    timeout = _timeout(step, ctx)
    over = step.params.get("over", "serial")
    result: CommandResult
    if over == "ssh":
        deadline = Deadline(timeout)
        channel, connected = ctx.guest.ssh(timeout)
        if connected:
            outcome["ssh_connected"] = f"127.0.0.1:{channel.port}"
        result = channel.run(step.params["command"], max(deadline.remaining, 1.0))
    else:
        result = ctx.guest.running_shell("run").run(step.params["command"], timeout)
    ctx.observations.commands.append(CommandObservation(
        step.line, ctx.guest.boot_name, result.command, result.status, result.output,
        step.params.get("expect_status", 0), step.params.get("output_contains"), channel=over,
    ))
    outcome.update(status=result.status)


def _repeat(ctx: RunContext, step: Step, outcome: dict[str, Any]) -> None:
    """The rounds, each awake for its delay first (`awake: {min, max, step}`), stopping after
    `stop_after_failures` failed rounds in a row; every round is recorded as a cycle."""
    def one_round(round_number: int, awake_seconds: float) -> None:
        ctx.events.emit(RepeatRound, round=round_number, of=step.params["times"], awake=awake_seconds)
        run_steps(ctx, step.children)

    def awake(seconds: float) -> None:
        keep_awake(seconds, ctx.guest.state is GuestState.RUNNING)

    cycles, stopped = run_rounds(step.params, ctx.observations, awake, one_round)
    ctx.observations.cycles.extend(asdict(cycle) | {"repeat_line": step.line} for cycle in cycles)
    outcome["rounds"] = len(cycles)
    if stopped is not None:
        outcome["stopped"] = f"after {step.params['stop_after_failures']} failed rounds in a row (round {stopped})"


STEPS: dict[str, Callable[[RunContext, Step, dict[str, Any]], None]] = {
    "boot": _boot,
    "mark": _mark,
    "hibernate": _power_off,
    "poweroff": _power_off,
    "crash": _power_off,
    "alter-signature": _alter_signature,
    "discard-image": _discard_image,
    "check": _check,
    "run": _run,
    "repeat": _repeat,
}


class VmmFault(LabError):
    """QEMU itself failed (died, or was stopped) while a step waited on the guest: named as such, never a hang."""

    exit_code = 1
    not_run_reason = "QEMU failed in an earlier step"


class FailedVmmPowerOff(LabError):
    """A power-off ended in `vmm-crash` or `vmm-hang`: the steps after it need that guest, so none runs."""

    exit_code = 1

    def __init__(self, boot: str, kind: str, step: str) -> None:
        self.not_run_reason = f"{boot} power-off was {kind} in `{step}`"
        super().__init__(f"{self.not_run_reason}: the steps after it were not run")


ENDS_THE_RUN = (VmmFault, FailedVmmPowerOff)
"""Failures after which the remaining steps are reported as not run, with the reason."""


def _vmm_fault_settled(guest: Guest) -> tuple[PowerOffClass, str] | None:
    """QEMU's fault, given a moment to show: its console can close a little before its exit can be reaped."""
    deadline = Deadline(VMM_FAULT_SETTLE_SECONDS)
    while (fault := guest.vmm_fault()) is None and not deadline.expired:
        time.sleep(0.05)
    return fault


def _step(ctx: RunContext, step: Step, details: dict[str, Any]) -> None:
    """Run one step; a wait it could not finish is put down to QEMU when QEMU failed, and recorded as
    the guest's kernel trouble when the kernel panicked, oopsed or hit a BUG and fell silent."""
    try:
        STEPS[step.kind](ctx, step, details)
    except (ChannelError, WaitTimeout, KernelTrouble) as error:
        fault = _vmm_fault_settled(ctx.guest)
        if fault is not None:
            kind, detail = fault
            ctx.observations.vmm_faults.append(VmmFaultObservation(
                step.line, step.describe(), ctx.guest.boot_name, kind, detail, ctx.events.now()))
            raise VmmFault(f"{ctx.guest.boot_name}: {kind}: {detail} during `{step.describe()}` ({error})") from error
        if isinstance(error, KernelTrouble):
            ctx.observations.kernel_troubles.append(KernelTroubleObservation(
                step_line=step.line, step=step.describe(), boot=ctx.guest.boot_name, line=error.line,
                waiting_for=error.what, quiet_seconds=error.quiet, seen_at=error.seen_at, stopped_at=error.stopped_at))
        raise


def _stop_after_a_failed_vmm(step: Step, observed: Observations) -> None:
    for power_off in observed.power_offs:
        kind = classify(power_off).kind
        if kind in (PowerOffClass.VMM_CRASH, PowerOffClass.VMM_HANG):
            raise FailedVmmPowerOff(power_off.boot, kind, step.describe())


def run_steps(ctx: RunContext, steps: tuple[Step, ...]) -> None:
    """Each step in order; after QEMU failed, the rest are recorded as not run, with the reason."""
    for index, step in enumerate(steps):
        mark = ctx.observations.mark()
        try:
            with ctx.events.step(step.kind, step.line, step.describe()) as outcome:
                try:
                    _step(ctx, step, outcome.details)
                finally:
                    outcome.expectations = [c.to_json() for c in step_expectations(ctx.observations.since(mark))]
            _stop_after_a_failed_vmm(step, ctx.observations.since(mark))
        except ENDS_THE_RUN as stop:
            for rest in steps[index + 1:]:
                ctx.events.not_run(rest.kind, rest.line, rest.describe(), stop.not_run_reason)
            raise
