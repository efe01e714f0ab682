"""What the terminal shows while a run goes on: each step as it ends, then the verdict.

A step is marked ✓ only when it did its work and met its own expectations (`expect:`,
`expect_status:`, a check's wants), judged by the verdict's own rules as the step ended;
otherwise ✗ with the first expectation it missed. Guest text is printed verbatim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from lab.events import Event, RepeatRound, RunStarted, StepEnded
from lab.judge.verdict import RunVerdict

SHOWN_OUTCOME = ("outcome", "image_on_disk", "timed_out", "token_found", "marker_alive", "swap_signature",
                 "status", "rounds", "stopped")


def step_line(event: StepEnded) -> tuple[bool, str]:
    """Whether the step met its expectations, and the detail to show beside it."""
    missed = [e for e in event.expectations if not e["passed"]]
    if event.error is not None:
        return False, event.error
    shown = "  ".join(f"{key}={event.outcome[key]}" for key in SHOWN_OUTCOME if key in event.outcome)
    if missed:
        return False, f"{missed[0]['detail']}  {shown}".strip()
    return True, shown


SUMMARISED_PHASES = ("freeze user space", "snapshot", "image write", "image read", "restore", "thaw tasks")
"""The kernel phases the terminal sums up after a run; result.json and report.html have them all."""


def kernel_phase_line(kernel_phases: dict[str, Any]) -> str | None:
    """`kernel: image write 6.27s 11.98 MB/s, restore 0.50s …`, medians (and ranges) over the run's boots."""
    summary = kernel_phases.get("summary") or {}
    shown = []
    for name in SUMMARISED_PHASES:
        if name not in summary or "seconds" not in summary[name]:
            continue
        seconds, rate = summary[name]["seconds"], summary[name].get("mb_per_s")
        text = f"{name} {seconds['median']:.2f}s"
        if seconds["count"] > 1:
            text += f" (min {seconds['min']:.2f}s, max {seconds['max']:.2f}s of {seconds['count']})"
        if rate is not None:
            text += f" {rate['median']:g} MB/s"
        shown.append(text)
    return "kernel: " + ", ".join(shown) if shown else None


class TerminalReport:
    """Prints each phase as it ends, then the verdict; subscribes to the run's event stream."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            psci = f", PSCI layer {event.psci}" if event.psci else ""
            qemu = f" with QEMU {event.qemu}" if event.qemu != "debian" else ""
            self.console.print(f"[bold]{escape(event.scenario)}[/] on {escape(event.image)}{escape(qemu)} "
                               f"({escape(event.accel)}: {escape(event.accel_reason)}{escape(psci)})")
        elif isinstance(event, RepeatRound):
            awake = f" (awake {event.awake:g}s first)" if event.awake else ""
            self.console.print(f"  round {event.round}/{event.of}{awake}")
        elif isinstance(event, StepEnded):
            met, detail = step_line(event)
            mark = "[green]✓[/]" if met else "[red]✗[/]"
            self.console.print(f"  {mark} {escape(event.label):<36} {event.seconds:7.1f}s  {escape(detail)}")

    def kernel_phases(self, kernel_phases: dict[str, Any]) -> None:
        line = kernel_phase_line(kernel_phases)
        if line is not None:
            self.console.print(f"  {escape(line)}")

    def verdict(self, verdict: RunVerdict, run_dir: Path, seconds: float) -> None:
        for power_off in verdict.power_offs:
            self.console.print(f"  {power_off.boot}: power-off classified [bold]{power_off.kind}[/]")
            for note in power_off.notes:
                self.console.print(f"    [yellow]note:[/] {escape(note)}")
            for disagreement in power_off.disagreements:
                self.console.print(f"    [yellow]disagreement:[/] {escape(disagreement)}")
        for finding in verdict.findings:
            self.console.print(f"  [yellow]finding[/] {escape(finding.headline())}")
            self.console.print(f"    advice: {escape(finding.advice)}")
        status = "[bold green]PASS[/]" if verdict.passed else "[bold red]FAIL[/]"
        self.console.print(f"{status} {escape(verdict.reason)}  {escape(f'[{seconds:.1f}s, {run_dir}]')}")
