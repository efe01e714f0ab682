"""`report.html`: one self-contained page per run, for a human deciding whether to trust the verdict.

It puts what each witness saw on one timeline next to the lab's own steps, so a reader can see
*when* QEMU, the PSCI layer and the guest console each noticed a power-off, then read the
witnesses' accounts, the checks and the raw logs. Inline CSS and SVG only: it opens anywhere,
offline, without JavaScript, and can be attached to a bug report as is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lab.events import Event, QemuLaunched, StepEnded
from lab.report.terminal import step_line
from lab.rundir import RunDirectory
from lab.vocabulary import CONSOLE_LABELS, KERNEL_TIMESTAMP, SYSTEM_OFF2_IDS, console_marks

QUIET_QMP_EVENTS = {"STOP", "RESUME"}
"""Every gdbstub trap of the PSCI layer stops and resumes the VM; those pairs would bury the rest."""
PSCI_POWER_PREFIXES = ("SYSTEM_OFF", "SYSTEM_RESET")

LANES = ("steps", "QEMU", "QMP", "PSCI", "console ≈")
LANE_COLORS = {"steps": "#4263eb", "QEMU": "#868e96", "QMP": "#e8590c", "PSCI": "#7048e8", "console ≈": "#2b8a3e"}
STEP_COLORS = {"boot": "#4263eb", "mark": "#1098ad", "hibernate": "#7048e8", "poweroff": "#495057",
               "crash": "#f76707", "check": "#37b24d", "run": "#1098ad"}
"""Neighbouring steps touch; a colour per kind keeps them apart."""
ERROR_COLOR = "#e03131"
WIDTH, LEFT, RIGHT, TOP = 1240, 100, 24, 10
BAR, ROW, CHAR = 12, 15, 6.3
"""Pixel sizes; CHAR is a generous average glyph width of the 11px label font, to keep labels apart."""
MAX_LABEL = 44

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #212529; background: #f8f9fa;
       margin: 0; }
main { max-width: 1280px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid #dee2e6;
padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
section > h2:first-child { margin-top: 0; }
section, header { background: #fff; border: 1px solid #dee2e6; border-radius: 6px; padding: 14px 18px; margin: 14px 0; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 700; }
.PASS { background: #2f9e44; } .FAIL { background: #e03131; } .INCOMPLETE { background: #868e96; }
.reason { font-size: 16px; margin: 8px 0; } .muted { color: #6c757d; } .small { font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px; border-bottom: 1px solid #e9ecef; }
th { background: #f1f3f5; font-weight: 600; } tr:nth-child(even) td { background: #fcfcfd; }
table.kv th { width: 180px; background: none; color: #495057; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; }
.ok, .bad { font-weight: 700; white-space: nowrap; } .ok { color: #2f9e44; } .bad { color: #e03131; }
.disagree, .error { color: #c92a2a; } ul { margin: 4px 0; padding-left: 20px; }
svg { width: 100%; height: auto; display: block; } .legend { font-size: 12px; color: #495057; margin-top: 8px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin: 0 4px 0 12px; }
a { color: #1c7ed6; }
"""


@dataclass(frozen=True)
class Item:
    """One thing on the timeline: a bar (with an end) or a mark, with a short label and a full detail."""

    lane: str
    start: float
    end: float | None
    label: str
    detail: str
    boot: str = ""
    color: str = ""
    failed: bool = False


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
                detail = (f"{files.name}: {call.get('name')}({', '.join(call.get('args', []))}) on vCPU "
                          f"{call.get('vcpu')} at guest +{call.get('seconds', 0):.3f}s: {call.get('action')} "
                          f"{call.get('response')}")
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
            stamp = KERNEL_TIMESTAMP.match(line)
            if stamp:
                kernel_seconds = float(stamp.group(1))
            for mark in console_marks(line):
                items.append(Item("console ≈", boots[files.name]["launched_at"] + kernel_seconds, None,
                                  CONSOLE_LABELS[mark], f"{files.name}: {line.strip()}", files.name))
    return items


def _label_rows(items: list[Item], x_of: Callable[[float], float]) -> list[tuple[Item, int, float, str]]:
    """Stack labels into rows so none overlaps: (item, row, text x, text anchor)."""
    free_from: list[float] = []
    placed = []
    for item in sorted(items, key=lambda i: i.start):
        width = min(len(item.label), MAX_LABEL) * CHAR
        x = x_of(item.start) + 4
        anchor = "start"
        low = x
        if x + width > WIDTH - RIGHT:
            x, anchor, low = x_of(item.end if item.end is not None else item.start) - 4, "end", x - 8 - width
        row = next((r for r, edge in enumerate(free_from) if edge <= low), len(free_from))
        if row == len(free_from):
            free_from.append(0.0)
        free_from[row] = low + width + 10
        placed.append((item, row, x, anchor))
    return placed


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _tick_step(span: float) -> float:
    return next((step for step in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if span / step <= 14), 1200)


def _timeline_svg(items: list[Item], boots: dict[str, dict[str, Any]], span: float) -> str:
    plot = WIDTH - LEFT - RIGHT

    def x_of(seconds: float) -> float:
        return LEFT + max(seconds, 0.0) / span * plot

    body: list[str] = []
    y = TOP
    for index, lane in enumerate(LANES):
        placed = _label_rows([i for i in items if i.lane == lane], x_of)
        rows = max((row for _, row, _, _ in placed), default=-1) + 1
        height = BAR + 10 + max(rows, 1) * ROW
        shade = "#f8f9fa" if index % 2 else "#fff"
        body.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{height}" fill="{shade}"/>'
                    f'<text x="8" y="{y + BAR + 3}" font-size="12" font-weight="600" fill="#495057">'
                    f"{escape(lane)}</text>")
        for item, row, text_x, anchor in placed:
            color = item.color or LANE_COLORS[lane]
            start = x_of(item.start)
            if item.end is not None:
                shape = (f'<rect x="{start:.1f}" y="{y + 4}" width="{max(x_of(item.end) - start, 2):.1f}" '
                         f'height="{BAR}" rx="2" fill="{color}" stroke="#fff" stroke-width="1"/>')
            else:
                shape = (f'<line x1="{start:.1f}" y1="{y + 3}" x2="{start:.1f}" y2="{y + height - 3}" '
                         f'stroke="{color}" stroke-width="1.5"/>'
                         f'<circle cx="{start:.1f}" cy="{y + 4 + BAR / 2}" r="4.5" fill="{color}"/>')
            text_y = y + BAR + 8 + (row + 1) * ROW - 4
            body.append(f"<g><title>{escape(item.detail)}</title>{shape}"
                        f'<text x="{text_x:.1f}" y="{text_y}" font-size="11" text-anchor="{anchor}" fill="#212529" '
                        f'stroke="{shade}" stroke-width="3" paint-order="stroke">'
                        f"{escape(_short(item.label))}</text></g>")
        y += height
    step = _tick_step(span)
    axis = [f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="#adb5bd"/>']
    tick = 0.0
    while tick <= span + 1e-9:
        x = x_of(tick)
        axis.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{y + 4}" stroke="#dee2e6" stroke-dasharray="2 3"/>'
                    f'<text x="{x:.1f}" y="{y + 16}" font-size="11" text-anchor="middle" fill="#495057">'
                    f'{tick:g}s</text>')
        tick += step
    launches = [f'<line x1="{x_of(b["launched_at"]):.1f}" y1="{TOP}" x2="{x_of(b["launched_at"]):.1f}" y2="{y}" '
                f'stroke="#868e96" stroke-dasharray="6 3"><title>{escape(name)} launched</title></line>'
                for name, b in boots.items()]
    height = y + 24
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
            f'aria-label="timeline of the run" font-family="system-ui, sans-serif">'
            + "".join(body) + "".join(axis) + "".join(launches) + "</svg>")


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], css_class: str = "") -> str:
    """A table from already escaped cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table from already escaped values."""
    rows = "".join(f"<tr><th>{escape(key)}</th><td>{value}</td></tr>" for key, value in pairs)
    return f'<table class="kv">{rows}</table>'


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return f"<code>{escape(text)}</code>"


def _header(result: dict[str, Any] | None, run_dir: RunDirectory) -> str:
    if result is None:
        return (f"<header><h1>{escape(run_dir.path.name)}</h1><span class='badge INCOMPLETE'>INCOMPLETE</span>"
                "<p class='reason'>no result.json: the run did not finish, so there is no verdict</p></header>")
    scenario, verdict = result["scenario"], result["verdict"]
    return (f"<header><h1>{escape(scenario['name'])} <span class='badge {escape(verdict['status'])}'>"
            f"{escape(verdict['status'])}</span></h1>"
            f"<p class='reason'>{escape(verdict['reason'])}</p>"
            f"<p class='muted'>{escape(scenario.get('description', ''))}</p>"
            f"<p class='small muted'>{result.get('seconds', 0):.1f}s · scenario file "
            f"<span class='mono'>{escape(scenario.get('path', ''))}</span> · run directory "
            f"<span class='mono'>{escape(str(run_dir.path.resolve()))}</span></p></header>")


def _environment(environment: dict[str, Any]) -> str:
    image = environment.get("image") or {}
    packages = ", ".join(f"{i['package']} {i['version']}" for i in image.get("inputs", []) if "package" in i)
    digests = "<br>".join(f"<span class='mono'>{escape(name)}</span> <span class='mono muted'>{escape(digest)}</span>"
                          for name, digest in image.get("outputs", {}).items())
    pairs = [
        ("image", escape(f"{image.get('name', '?')} ({image.get('kernel_release', '?')})")),
        ("image directory", f"<span class='mono'>{escape(image.get('path', '?'))}</span>"),
        ("image packages", escape(packages)),
        ("image outputs (sha256)", digests),
        ("accelerator", escape(f"{environment.get('accel', '?')}: {environment.get('accel_reason', '')}")),
        ("PSCI layer personality", escape(environment.get("psci_personality") or "none (QEMU's own PSCI)")),
        ("QEMU", escape(environment.get("qemu", "?"))),
        ("host", escape(environment.get("host", "?"))),
        ("lab", escape(environment.get("lab", "?"))),
    ]
    return f"<section><h2>Environment</h2>{_key_values(pairs)}</section>"


def _timeline(run_dir: RunDirectory, result: dict[str, Any] | None) -> str:
    events = run_dir.read_events()
    boots = _boot_starts(run_dir, events)
    run_end = max([float((result or {}).get("seconds", 0)), *(e.t for e in events)])
    items = (_step_items(events) + _qemu_items(boots, run_end) + _qmp_items(run_dir) + _psci_items(run_dir, boots)
             + _console_items(run_dir, boots))
    span = max([run_end, 1.0, *(i.end or i.start for i in items)])
    swatches = "".join(f"<span class='swatch' style='background:{color}'></span>{escape(lane)}"
                       for lane, color in LANE_COLORS.items() if lane != "steps")
    legend = (f"<p class='legend'>{swatches}<span class='swatch' style='background:{ERROR_COLOR}'></span>"
              "step that failed (other steps are coloured by kind)"
              "<br>Steps and QEMU processes come from the lab's own clock (seconds since the run started). "
              "QMP events sit where the lab received them (exact); STOP/RESUME pairs from gdbstub traps are left out. "
              "PSCI calls sit at the boot's QEMU launch plus the PSCI layer's guest-relative seconds (close). "
              "<b>Console milestones (≈) are approximate</b>: they sit at the QEMU launch plus the kernel's own "
              "timestamp, which starts after QEMU does and drifts from wall time under TCG, often by seconds; a line "
              "without a timestamp takes the previous one. Dashed lines mark QEMU launches; hover for details.</p>")
    witness_rows = [
        (f"{item.start:.2f}s", escape(item.lane), escape(item.boot), escape(item.label),
         f"<code>{escape(item.detail)}</code>")
        for item in sorted(items, key=lambda i: i.start) if item.lane not in ("steps", "QEMU")
    ]
    step_rows = [(f"{item.start:.2f}s", f"{(item.end or item.start) - item.start:.2f}s", escape(item.label),
                  f"<span class='{'error' if item.failed else 'muted'}'>{escape(item.detail)}</span>")
                 for item in items if item.lane == "steps"]
    return (f"<section><h2>Timeline</h2>{_timeline_svg(items, boots, span)}{legend}"
            f"<h3>Steps</h3>{_table(('start', 'took', 'step', 'what happened'), step_rows)}"
            f"<h3>Witness events on the timeline</h3>"
            f"{_table(('at', 'source', 'boot', 'event', 'detail'), witness_rows)}</section>")


def _power_offs(verdict: dict[str, Any]) -> str:
    if not verdict.get("power_offs"):
        return "<section><h2>Power-offs</h2><p class='muted'>no power-off was judged in this run</p></section>"
    parts = ["<section><h2>Power-offs</h2>"]
    for power_off in verdict["power_offs"]:
        parts.append(f"<h3>{escape(power_off['boot'])}: {escape(power_off['intent'])} → "
                     f"<span class='mono'>{escape(power_off['class'])}</span></h3>")
        if power_off["disagreements"]:
            items = "".join(f"<li class='disagree'>{escape(d)}</li>" for d in power_off["disagreements"])
            parts.append(f"<p>Disagreements:</p><ul>{items}</ul>")
        else:
            parts.append("<p class='muted'>the witnesses agree with this class</p>")
        rows = []
        for witness in power_off["witnesses"]:
            facts = "<br>".join(f"{escape(key)}: {_value(value)}" for key, value in witness["facts"].items())
            evidence = "<pre>" + escape("\n".join(witness["evidence"])) + "</pre>" if witness["evidence"] else ""
            consistent = witness.get("consistent_with")
            opinion = escape(", ".join(consistent)) if consistent is not None else "<span class='muted'>none</span>"
            rows.append((f"<b>{escape(witness['name'])}</b>", opinion, facts, evidence,
                         escape(witness.get("explanation", ""))))
        parts.append(_table(("witness", "consistent with", "facts", "evidence", "explanation"), rows))
    return "".join(parts) + "</section>"


def _checks(verdict: dict[str, Any]) -> str:
    rows = [("<span class='ok'>✓ pass</span>" if check["passed"] else "<span class='bad'>✗ FAIL</span>",
             escape(check["name"]), escape(check["detail"]), escape(str(check.get("line") or "")))
            for check in verdict["checks"]]
    failed = sum(not check["passed"] for check in verdict["checks"])
    table = _table(("", "check", "detail", "line"), rows)
    return f"<section><h2>Checks</h2><p class='muted'>{len(rows)} checks, {failed} failed</p>{table}</section>"


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    size = nbytes / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _files(run_dir: RunDirectory) -> str:
    rows = [(f"<a href='{escape(quote(path.name))}'>{escape(path.name)}</a>", _size(path.stat().st_size))
            for path in sorted(run_dir.path.iterdir())
            if path.is_file() and path != run_dir.html and not path.name.endswith(".lab-lock")]
    return f"<section><h2>Files</h2>{_table(('file', 'size'), rows)}</section>"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def write_html_report(run_dir: RunDirectory) -> Path:
    """Write `report.html` into the run directory; works on unfinished runs too (no verdict then)."""
    result = run_dir.read_result()
    sections = [_header(result, run_dir)]
    if result is not None:
        sections.append(_environment(result.get("environment", {})))
    sections.append(_timeline(run_dir, result))
    if result is not None:
        sections += [_power_offs(result["verdict"]), _checks(result["verdict"])]
    sections.append(_files(run_dir))
    title = f"{result['scenario']['name']}: {result['verdict']['status']}" if result else run_dir.path.name
    path = run_dir.html
    path.write_text(_page(title, "".join(sections)))
    return path


def write_matrix_report(run_dirs: list[RunDirectory], out: Path) -> Path:
    """Write one summary page over several runs, linking each run's own report.html."""
    rows = []
    passed = 0
    for run_dir in run_dirs:
        result = run_dir.read_result()
        link = f"<a href='{escape(quote(os.path.relpath(run_dir.html, out.parent)))}'>report</a>"
        scenario = (result or {}).get("scenario") or run_dir.read_scenario() or {}
        named = (f"<b>{escape(scenario.get('name', '?'))}</b><br>"
                 f"<span class='small muted mono'>{escape(run_dir.path.name)}</span>")
        if result is None:
            rows.append((named, "", "", "", "<span class='badge INCOMPLETE'>INCOMPLETE</span>",
                         "no result.json: the run did not finish", "", link))
            continue
        environment, verdict = result.get("environment", {}), result["verdict"]
        image = environment.get("image") or {}
        passed += verdict["status"] == "PASS"
        rows.append((named,
                     escape(f"{image.get('name', '?')} ({image.get('kernel_release', '?')})"),
                     escape(environment.get("psci_personality") or "none"), escape(environment.get("accel", "?")),
                     f"<span class='badge {escape(verdict['status'])}'>{escape(verdict['status'])}</span>",
                     escape(verdict["reason"]), f"{result.get('seconds', 0):.1f}s", link))
    table = _table(("scenario", "image / kernel", "PSCI", "accel", "status", "reason", "seconds", ""), rows)
    body = (f"<header><h1>Hibernation lab: {len(run_dirs)} runs</h1>"
            f"<p class='reason'>{passed} passed, {len(run_dirs) - passed} did not</p></header>"
            f"<section>{table}</section>")
    out.write_text(_page(f"hibernation lab: {passed}/{len(run_dirs)} passed", body))
    return out
