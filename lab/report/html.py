"""`report.html`: one self-contained page per run, for a human deciding whether to trust the verdict.

It puts what each witness saw on one timeline next to the lab's own steps, so a reader can see
*when* QEMU, the PSCI layer and the guest console each noticed a power-off, then read the
witnesses' accounts, the checks and the raw logs. Inline CSS and SVG only: it opens anywhere,
offline, without JavaScript, and can be attached to a bug report as is.

This module gathers what the page shows from the run directory into plain values;
`lab.report.timeline` places the timeline's items, and the Jinja templates beside this module
(`templates/`) lay out the page. Everything on the page is guest- or run-supplied text at some
point, so the templates escape every value (autoescape) and nothing here builds markup.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined

from lab.events import Event, QemuLaunched, StepEnded
from lab.report.kernel_lane import kernel_items
from lab.report.terminal import step_line
from lab.report.timeline import ERROR_COLOR, LANE_COLORS, STEP_COLORS, Item, lay_out
from lab.rundir import RunDirectory
from lab.vocabulary import CONSOLE_LABELS, KERNEL_TIMESTAMP, SYSTEM_OFF2_IDS, console_marks

QUIET_QMP_EVENTS = {"STOP", "RESUME"}
"""Every gdbstub trap of the PSCI layer stops and resumes the VM; those pairs would bury the rest."""
PSCI_POWER_PREFIXES = ("SYSTEM_OFF", "SYSTEM_RESET")

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
"""Characters an HTML5 parser rejects both as they are and as character references (and XML, which the
inline SVG must also be, rejects the C0 controls and surrogates): escaping cannot carry them."""


def _printable(value: Any) -> Any:
    """Text as a page can hold it: C0 controls become their pictures (␛ for a guest's ANSI colours), the
    other unprintable characters become �. Markup from the templates' own macros passes untouched."""
    if not isinstance(value, str) or hasattr(value, "__html__"):
        return value
    return _UNPRINTABLE.sub(lambda m: chr(0x2400 + ord(m[0])) if m[0] < " " else "\N{REPLACEMENT CHARACTER}", value)


_TEMPLATES = Environment(
    loader=PackageLoader("lab.report"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    finalize=_printable,
)


@dataclass(frozen=True)
class Header:
    scenario: str
    status: str
    reason: str
    description: str
    scenario_path: str
    seconds: float


@dataclass(frozen=True)
class RunEnvironment:
    """What the run ran on, as shown: the image and its packages and digests, the accelerator, the PSCI layer."""

    image: str
    image_path: str
    packages: str
    outputs: list[tuple[str, str]]
    """Each output file of the image with its sha256."""
    accel: str
    psci: str
    qemu: str
    host: str
    lab: str


@dataclass(frozen=True)
class Witness:
    name: str
    consistent_with: str | None
    """The classes the witness's account fits, comma-separated; None when it holds no opinion."""
    facts: list[tuple[str, str]]
    evidence: str
    explanation: str


@dataclass(frozen=True)
class PowerOff:
    boot: str
    intent: str
    kind: str
    disagreements: list[str]
    witnesses: list[Witness]


@dataclass(frozen=True)
class Check:
    passed: bool
    name: str
    detail: str
    line: str


@dataclass(frozen=True)
class File:
    name: str
    href: str
    size: str


@dataclass(frozen=True)
class MatrixRow:
    scenario: str
    run: str
    image: str
    psci: str
    accel: str
    status: str
    reason: str
    seconds: float | None
    href: str


def _boot_starts(run_dir: RunDirectory, events: list[Event]) -> dict[str, dict[str, Any]]:
    """Each boot's launch and exit in run seconds; `boot-*.json` is exact, the launch event a fallback."""
    boots = {e.boot: {"launched_at": e.t} for e in events if isinstance(e, QemuLaunched)}
    for files in run_dir.boots():
        record = files.read_record()
        if record is not None:
            boots[files.name] = record
    return boots


def _step_items(events: list[Event]) -> list[Item]:
    items = []
    for event in events:
        if isinstance(event, StepEnded):
            met, shown = step_line(event)
            detail = f"{event.label}: {'met its expectations' if met else 'missed: ' + shown} in {event.seconds:.2f}s"
            color = ERROR_COLOR if not met else STEP_COLORS.get(event.step, LANE_COLORS["steps"])
            items.append(Item("steps", event.t - event.seconds, event.t, event.step, detail, color=color,
                              failed=not met))
    return items


def _qemu_items(boots: dict[str, dict[str, Any]], run_end: float) -> list[Item]:
    items = []
    for name, boot in boots.items():
        ended = boot.get("exited_at")
        how = "stopped by the lab" if boot.get("killed_by_lab") else f"exit {boot.get('exit_code')}"
        label = f"{name} · {how}" if ended is not None else f"{name} · still running"
        items.append(Item("QEMU", boot["launched_at"], ended if ended is not None else run_end, label,
                          f"{name}: QEMU launched at {boot['launched_at']:.2f}s, {how}", name))
    return items


def _qmp_items(run_dir: RunDirectory) -> list[Item]:
    items = []
    for files in run_dir.boots():
        for record in files.read_qmp():
            event = record.get("event")
            if event in QUIET_QMP_EVENTS or "lab_seconds" not in record:
                continue
            reason = (record.get("data") or {}).get("reason")
            label = f"{event} {reason}" if reason else str(event)
            detail = f"{files.name}: QMP {event} {json.dumps(record.get('data', {}))} at {record['lab_seconds']:.3f}s"
            items.append(Item("QMP", record["lab_seconds"], None, label, detail, files.name))
    return items


def _psci_label(call: dict[str, Any]) -> str | None:
    """The calls that speak to power-off: the power-off calls themselves and how SYSTEM_OFF2 was offered."""
    name, response = call.get("name", ""), call.get("response")
    if name.startswith(PSCI_POWER_PREFIXES):
        return f"{name} → {call.get('action') if response is None else response}"
    if name == "PSCI_VERSION" and isinstance(response, int):
        return f"PSCI_VERSION → v{response >> 16}.{response & 0xFFFF}"
    if name == "PSCI_FEATURES" and call.get("args") and int(call["args"][0], 16) in SYSTEM_OFF2_IDS:
        return f"PSCI_FEATURES(SYSTEM_OFF2) → {response}"
    return None


def _psci_items(run_dir: RunDirectory, boots: dict[str, dict[str, Any]]) -> list[Item]:
    items = []
    for files in run_dir.boots():
        if files.name not in boots:
            continue
        for call in files.read_psci():
            label = _psci_label(call)
            if label is not None:
                outcome = call.get("action") if call.get("response") is None else \
                    f"{call.get('action')} {call.get('response')}"
                detail = (f"{files.name}: {call.get('name')}({', '.join(call.get('args', []))}) on vCPU "
                          f"{call.get('vcpu')} at guest +{call.get('seconds', 0):.3f}s: {outcome}")
                items.append(Item("PSCI", boots[files.name]["launched_at"] + call.get("seconds", 0), None, label,
                                  detail, files.name))
    return items


def _console_items(run_dir: RunDirectory, boots: dict[str, dict[str, Any]]) -> list[Item]:
    """Milestones at launch + kernel time; a line without a timestamp takes the last one seen before it."""
    items = []
    for files in run_dir.boots():
        if files.name not in boots:
            continue
        kernel_seconds = 0.0
        for line in files.read_console():
            stamp = KERNEL_TIMESTAMP.search(line)
            if stamp:
                kernel_seconds = float(stamp.group(1))
            for mark in console_marks(line):
                items.append(Item("console ≈", boots[files.name]["launched_at"] + kernel_seconds, None,
                                  CONSOLE_LABELS[mark], f"{files.name}: {line.strip()}", files.name))
    return items


def _trouble_items(result: dict[str, Any] | None) -> list[Item]:
    """Kernel trouble (from its line to when the lab stopped waiting) and QEMU's own failures."""
    observations = (result or {}).get("observations", {})
    items = []
    for trouble in observations.get("kernel_troubles", []):
        if trouble.get("seen_at") is None:
            continue
        detail = (f"{trouble['boot']}: kernel trouble {trouble['line']!r} while waiting for {trouble['waiting_for']} "
                  f"(`{trouble['step']}`); the lab stopped waiting after {trouble['quiet_seconds']:g}s of silence")
        items.append(Item("trouble", trouble["seen_at"], trouble.get("stopped_at"), "kernel trouble", detail,
                          trouble["boot"], failed=True))
    for fault in observations.get("vmm_faults", []):
        if fault.get("seen_at") is None:
            continue
        detail = f"{fault['boot']}: {fault['kind']} during `{fault['step']}`: {fault['detail']}"
        items.append(Item("trouble", fault["seen_at"], None, fault["kind"], detail, fault["boot"], failed=True))
    return items


def _timeline(run_dir: RunDirectory, result: dict[str, Any] | None) -> dict[str, Any]:
    """The timeline, its legend, and the same items as tables: steps, and what the witnesses saw."""
    events = run_dir.read_events()
    boots = _boot_starts(run_dir, events)
    run_end = max([float((result or {}).get("seconds", 0)), *(e.t for e in events)])
    items = (_step_items(events) + _qemu_items(boots, run_end) + _qmp_items(run_dir) + _psci_items(run_dir, boots)
             + _console_items(run_dir, boots) + _trouble_items(result)
             + kernel_items(result, {name: boot["launched_at"] for name, boot in boots.items()}))
    return {
        "timeline": lay_out(items, {name: boot["launched_at"] for name, boot in boots.items()}, run_end),
        "legend": [(lane, color) for lane, color in LANE_COLORS.items() if lane != "steps"],
        "error_color": ERROR_COLOR,
        "steps": [item for item in items if item.lane == "steps"],
        "witnessed": sorted((item for item in items if item.lane not in ("steps", "QEMU")), key=lambda i: i.start),
    }


def _header(result: dict[str, Any]) -> Header:
    scenario, verdict = result["scenario"], result["verdict"]
    return Header(scenario["name"], verdict["status"], verdict["reason"], scenario.get("description", ""),
                  scenario.get("path", ""), result.get("seconds", 0))


def _environment(environment: dict[str, Any]) -> RunEnvironment:
    image = environment.get("image") or {}
    return RunEnvironment(
        image=f"{image.get('name', '?')} ({image.get('kernel_release', '?')})",
        image_path=image.get("path", "?"),
        packages=", ".join(f"{i['package']} {i['version']}" for i in image.get("inputs", []) if "package" in i),
        outputs=list(image.get("outputs", {}).items()),
        accel=f"{environment.get('accel', '?')}: {environment.get('accel_reason', '')}",
        psci=environment.get("psci_personality") or "none (QEMU's own PSCI)",
        qemu=environment.get("qemu", "?"),
        host=environment.get("host", "?"),
        lab=environment.get("lab", "?"),
    )


def _fact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _witness(witness: dict[str, Any]) -> Witness:
    consistent = witness.get("consistent_with")
    return Witness(witness["name"], None if consistent is None else ", ".join(consistent),
                   [(key, _fact(value)) for key, value in witness["facts"].items()], "\n".join(witness["evidence"]),
                   witness.get("explanation", ""))


def _power_offs(verdict: dict[str, Any]) -> list[PowerOff]:
    return [PowerOff(power_off["boot"], power_off["intent"], power_off["class"], power_off["disagreements"],
                     [_witness(witness) for witness in power_off["witnesses"]])
            for power_off in verdict.get("power_offs") or []]


def _checks(verdict: dict[str, Any]) -> list[Check]:
    return [Check(check["passed"], check["name"], check["detail"], str(check.get("line") or ""))
            for check in verdict["checks"]]


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    size = nbytes / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _files(run_dir: RunDirectory) -> list[File]:
    return [File(path.name, quote(path.name), _size(path.stat().st_size))
            for path in sorted(run_dir.path.iterdir())
            if path.is_file() and path != run_dir.html and not path.name.endswith(".lab-lock")]


def _render(template: str, path: Path, **context: Any) -> Path:
    path.write_text(_TEMPLATES.get_template(template).render(**context), encoding="utf-8")
    return path


def write_html_report(run_dir: RunDirectory) -> Path:
    """Write `report.html` into the run directory; works on unfinished runs too (no verdict then)."""
    result = run_dir.read_result()
    if result is None:
        judged: dict[str, Any] = {"title": run_dir.path.name, "header": None, "environment": None,
                                  "power_offs": None, "checks": None, "findings": None}
    else:
        verdict = result["verdict"]
        judged = {"title": f"{result['scenario']['name']}: {verdict['status']}", "header": _header(result),
                  "environment": _environment(result.get("environment", {})), "power_offs": _power_offs(verdict),
                  "checks": _checks(verdict), "findings": verdict.get("findings", [])}
    return _render("run.html.j2", run_dir.html, run_name=run_dir.path.name, run_path=str(run_dir.path.resolve()),
                   files=_files(run_dir), **judged, **_timeline(run_dir, result))


def _matrix_row(run_dir: RunDirectory, out: Path) -> MatrixRow:
    result = run_dir.read_result()
    href = quote(os.path.relpath(run_dir.html, out.parent))
    scenario = ((result or {}).get("scenario") or run_dir.read_scenario() or {}).get("name", "?")
    if result is None:
        return MatrixRow(scenario, run_dir.path.name, "", "", "", "INCOMPLETE",
                         "no result.json: the run did not finish", None, href)
    environment, verdict = result.get("environment", {}), result["verdict"]
    image = environment.get("image") or {}
    return MatrixRow(scenario, run_dir.path.name, f"{image.get('name', '?')} ({image.get('kernel_release', '?')})",
                     environment.get("psci_personality") or "none", environment.get("accel", "?"), verdict["status"],
                     verdict["reason"], result.get("seconds", 0), href)


def write_matrix_report(run_dirs: list[RunDirectory], out: Path, known: dict[Path, str] | None = None) -> Path:
    """Write one summary page over several runs, linking each run's own report.html; `known` labels the
    failures a known issue explains, by run directory."""
    rows = [_matrix_row(run_dir, out) for run_dir in run_dirs]
    passed = sum(row.status == "PASS" for row in rows)
    labels = {run_dir.path.name: (known or {}).get(run_dir.path.resolve(), "") for run_dir in run_dirs}
    return _render("matrix.html.j2", out, title=f"hibernation lab: {passed}/{len(rows)} passed", rows=rows,
                   passed=passed, known=labels)
