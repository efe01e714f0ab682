"""What a run leaves behind (`result.json`) and what the terminal shows while it runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from lab.events import EventLog
from lab.judge.observations import Observations
from lab.judge.verdict import RunVerdict
from lab.scenario.model import Scenario

RESULT_SCHEMA_VERSION = 1
SHOWN_OUTCOME = ("outcome", "image_on_disk", "timed_out", "token_found", "marker_alive", "swap_signature",
                 "status", "rounds")


def write_result(
    run_dir: Path, scenario: Scenario, verdict: RunVerdict, observations: Observations,
    events: EventLog, environment: dict[str, Any], seconds: float,
) -> Path:
    result = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "scenario": {"name": scenario.name, "path": str(scenario.path), "description": scenario.description},
        "verdict": verdict.to_json(),
        "seconds": round(seconds, 3),
        "phases": [
            {k: r[k] for k in r if k not in ("kind",)} for r in events.phases()
        ],
        "environment": environment,
        "observations": observations.to_json(),
        "files": sorted(p.name for p in run_dir.iterdir() if p.is_file() and p.name != "result.json"),
    }
    path = run_dir / "result.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


class TerminalReport:
    """Prints each phase as it ends, then the verdict; subscribes to the run's event stream."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)

    def __call__(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if kind == "run-start":
            psci = f", PSCI layer {record['psci']}" if record.get("psci") else ""
            self.console.print(f"[bold]{escape(record['scenario'])}[/] on {escape(record['image'])} "
                               f"({escape(record['accel'])}: {escape(record['accel_reason'])}{escape(psci)})")
        elif kind == "repeat-round":
            self.console.print(f"  round {record['round']}/{record['of']}")
        elif kind == "step-end":
            mark = "[green]✓[/]" if record["status"] == "done" else "[red]✗[/]"
            outcome = record.get("outcome", {})
            detail = record.get("error") or "  ".join(
                f"{key}={outcome[key]}" for key in SHOWN_OUTCOME if key in outcome
            )
            shown = record["params"].get("params", record["step"])
            self.console.print(f"  {mark} {escape(shown):<36} {record['seconds']:7.1f}s  {escape(detail)}")

    def verdict(self, verdict: RunVerdict, run_dir: Path, seconds: float) -> None:
        for power_off in verdict.power_offs:
            self.console.print(f"  {power_off.boot}: power-off classified [bold]{power_off.kind}[/]")
            for note in power_off.notes:
                self.console.print(f"    [yellow]note:[/] {escape(note)}")
            for disagreement in power_off.disagreements:
                self.console.print(f"    [yellow]disagreement:[/] {escape(disagreement)}")
        status = "[bold green]PASS[/]" if verdict.passed else "[bold red]FAIL[/]"
        self.console.print(f"{status} {escape(verdict.reason)}  {escape(f'[{seconds:.1f}s, {run_dir}]')}")
