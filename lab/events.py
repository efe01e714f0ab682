"""The run's event stream: typed records of what the lab did and when, as JSON lines.

Reporters subscribe to it (the terminal prints each step as it ends); the HTML report,
reproduce.sh and a matrix's live table read the same records back with `read_events`, so
what was shown is what was recorded. Every record carries `t`, seconds since the run started.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str]
    t: float

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run-start"
    scenario: str
    image: str
    accel: str
    accel_reason: str
    psci: str | None
    qemu: str


@dataclass(frozen=True)
class StepStarted(Event):
    kind: ClassVar[str] = "step-start"
    step: str
    line: int
    label: str
    """The step as written (`boot expect=fresh`): what a person recognises it by."""


@dataclass(frozen=True)
class StepEnded(Event):
    kind: ClassVar[str] = "step-end"
    step: str
    line: int
    label: str
    status: str
    """`done` when the step did its work, `error` when it could not (its error says why)."""
    seconds: float
    outcome: dict[str, Any] = field(default_factory=dict)
    expectations: list[dict[str, Any]] = field(default_factory=list)
    """The step's own expectations (`expect:`, `expect_status:`, a check's wants), judged as it ended."""
    error: str | None = None


@dataclass(frozen=True)
class QemuLaunched(Event):
    kind: ClassVar[str] = "qemu-launched"
    boot: str
    accel: str


@dataclass(frozen=True)
class PortTaken(Event):
    """A port QEMU was to listen on was taken when it started; the launch was retried with others."""

    kind: ClassVar[str] = "port-taken"
    boot: str
    detail: str


@dataclass(frozen=True)
class RepeatRound(Event):
    kind: ClassVar[str] = "repeat-round"
    round: int
    of: int
    awake: float = 0.0
    """Seconds the round stayed awake before its steps (a repeat's `awake`)."""


@dataclass(frozen=True)
class RunEnded(Event):
    kind: ClassVar[str] = "run-end"
    status: str
    reason: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (RunStarted, StepStarted, StepEnded, QemuLaunched, PortTaken, RepeatRound, RunEnded)
}
Listener = Callable[[Event], None]


def parse_event(record: dict[str, Any]) -> Event | None:
    """The typed event for one record; None for a kind or shape this lab does not know."""
    event_type = EVENT_TYPES.get(record.get("kind", ""))
    if event_type is None:
        return None
    names = {f.name for f in dataclasses.fields(event_type)}
    try:
        return event_type(**{k: v for k, v in record.items() if k in names})
    except TypeError:
        return None


def read_events(path: Path) -> list[Event]:
    """The events of a run; a line cut short by a killed run is skipped, not fatal."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            event = parse_event(json.loads(line))
        except ValueError:
            continue
        if event is not None:
            events.append(event)
    return events


@dataclass
class StepOutcome:
    """What a running step collects: details to show, and its expectations once judged."""

    details: dict[str, Any] = field(default_factory=dict)
    expectations: list[dict[str, Any]] = field(default_factory=list)


class EventLog:
    """Append-only typed events mirrored to `events.jsonl`, handed to listeners as they happen."""

    def __init__(self, path: Path, started: float) -> None:
        self.path = path
        self.started = started
        self.events: list[Event] = []
        self.listeners: list[Listener] = []

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def emit(self, event_type: type[Event], **fields: Any) -> Event:
        event = event_type(t=self.now(), **fields)
        self.events.append(event)
        with self.path.open("a") as stream:
            stream.write(json.dumps(event.to_record(), default=str) + "\n")
        for listener in self.listeners:
            listener(event)
        return event

    @contextmanager
    def step(self, step: str, line: int, label: str) -> Iterator[StepOutcome]:
        """Record a step from start to end; an exception ends it with status `error` and is re-raised."""
        start = self.emit(StepStarted, step=step, line=line, label=label)
        outcome = StepOutcome()

        def ended(status: str, error: str | None = None) -> None:
            self.emit(StepEnded, step=step, line=line, label=label, status=status,
                      seconds=round(self.now() - start.t, 3), outcome=outcome.details,
                      expectations=outcome.expectations, error=error)

        try:
            yield outcome
        except BaseException as error:
            ended("error", str(error) or type(error).__name__)
            raise
        ended("done")

    def steps_ended(self) -> list[StepEnded]:
        return [event for event in self.events if isinstance(event, StepEnded)]
