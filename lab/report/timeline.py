"""Where things sit on a run's timeline: lanes, bars and marks, label rows that never overlap, the time axis.

The witnesses of a power-off report on different clocks and at very different densities (a PSCI
layer logs a handful of calls within a second, a step lasts a minute), so placing them readably is
real work, and it is done here once, as numbers: every item gets its coordinates and its label a row
of its own where it would otherwise collide. This module reads no files and builds no markup;
`lab.report.html` gathers the items from the run directory and `templates/timeline.svg.j2` draws
what `lay_out` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

LANES = ("steps", "QEMU", "QMP", "PSCI", "console ≈", "kernel PM")
LANE_COLORS = {"steps": "#4263eb", "QEMU": "#868e96", "QMP": "#e8590c", "PSCI": "#7048e8", "console ≈": "#2b8a3e",
               "kernel PM": "#c2255c"}
STEP_COLORS = {"boot": "#4263eb", "mark": "#1098ad", "hibernate": "#7048e8", "poweroff": "#495057",
               "crash": "#f76707", "check": "#37b24d", "run": "#1098ad"}
"""Neighbouring steps touch; a colour per kind keeps them apart."""
ERROR_COLOR = "#e03131"
WIDTH, LEFT, RIGHT, TOP = 1240, 100, 24, 10
BAR, ROW, CHAR = 12, 15, 6.3
"""Pixel sizes; CHAR is a generous average glyph width of the 11px label font, to keep labels apart."""
MAX_LABEL = 44
DOT_RADIUS = 4.5
TICK_STEPS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)
"""Seconds between ticks, the first that gives at most 14 of them."""


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


@dataclass(frozen=True)
class Bar:
    """Something that lasted: a step, a QEMU process."""

    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Mark:
    """Something that happened at one moment: a vertical line across the lane with a dot on it."""

    x: float
    top: float
    bottom: float
    dot_y: float
    radius: float


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    anchor: str
    """SVG text-anchor: `start` right of the item, `end` left of it where the plot's right edge is near."""
    text: str


@dataclass(frozen=True)
class Placed:
    """An item at its place: exactly one of bar and mark, its label, and the detail shown on hover."""

    color: str
    detail: str
    label: Label
    bar: Bar | None
    mark: Mark | None


@dataclass(frozen=True)
class Lane:
    name: str
    y: float
    height: float
    shade: str
    """The lane's background; labels get a halo of it so lines passing behind them do not cross the text."""
    name_x: float
    name_y: float
    items: tuple[Placed, ...]


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Launch:
    """A dashed line where a boot's QEMU process started."""

    x: float
    boot: str


@dataclass(frozen=True)
class Timeline:
    """The whole drawing, in the SVG's own pixels (the page scales it to fit)."""

    width: float
    height: float
    top: float
    plot_left: float
    plot_right: float
    axis_y: float
    tick_bottom: float
    tick_label_y: float
    lanes: tuple[Lane, ...]
    ticks: tuple[Tick, ...]
    launches: tuple[Launch, ...]


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _tick_step(span: float) -> float:
    return next((step for step in TICK_STEPS if span / step <= 14), 1200)


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


def _px(value: float) -> float:
    """A coordinate to a tenth of a pixel: finer would only lengthen the page."""
    return round(value, 1)


def lay_out(items: list[Item], launches: dict[str, float], run_end: float) -> Timeline:
    """Place items in lanes over 0 s to the run's end (or the last item); `launches` maps each boot to its start."""
    span = max([run_end, 1.0, *(i.end if i.end is not None else i.start for i in items)])
    plot = WIDTH - LEFT - RIGHT

    def x_of(seconds: float) -> float:
        return LEFT + max(seconds, 0.0) / span * plot

    lanes = []
    y: float = TOP
    for index, lane in enumerate(LANES):
        rows = _label_rows([i for i in items if i.lane == lane], x_of)
        height = BAR + 10 + (max((row for _, row, _, _ in rows), default=0) + 1) * ROW
        placed = []
        for item, row, text_x, anchor in rows:
            start = x_of(item.start)
            bar: Bar | None = None
            mark: Mark | None = None
            if item.end is not None:
                bar = Bar(_px(start), y + 4, _px(max(x_of(item.end) - start, 2)), BAR)
            else:
                mark = Mark(_px(start), y + 3, y + height - 3, y + 4 + BAR / 2, DOT_RADIUS)
            label = Label(_px(text_x), y + BAR + 8 + (row + 1) * ROW - 4, anchor, _short(item.label))
            placed.append(Placed(item.color or LANE_COLORS[lane], item.detail, label, bar, mark))
        lanes.append(Lane(lane, y, height, "#f8f9fa" if index % 2 else "#fff", 8, y + BAR + 3, tuple(placed)))
        y += height
    ticks = []
    step = _tick_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        ticks.append(Tick(_px(x_of(tick)), f"{tick:g}s"))
        tick += step
    return Timeline(WIDTH, y + 24, TOP, LEFT, WIDTH - RIGHT, y, y + 4, y + 16, tuple(lanes), tuple(ticks),
                    tuple(Launch(_px(x_of(at)), boot) for boot, at in launches.items()))
