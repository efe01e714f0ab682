"""The run's event stream: every step's start, end, duration and outcome, as JSON lines.

Reporters subscribe to it (the terminal shows phases as they finish); the report and the
verdict read the same records afterwards, so what was shown is what was judged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Listener = Callable[[dict[str, Any]], None]


class EventLog:
    """Append-only, timestamped records (seconds since the run started) mirrored to a file."""

    def __init__(self, path: Path, started: float) -> None:
        self.path = path
        self.started = started
        self.records: list[dict[str, Any]] = []
        self.listeners: list[Listener] = []

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"t": self.now(), "kind": kind, **fields}
        self.records.append(record)
        with self.path.open("a") as stream:
            stream.write(json.dumps(record, default=str) + "\n")
        for listener in self.listeners:
            listener(record)
        return record

    @contextmanager
    def step(self, name: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Record a step; the yielded dict collects the step's outcome details."""
        start = self.emit("step-start", step=name, params=params)
        outcome: dict[str, Any] = {}
        try:
            yield outcome
        except BaseException as error:
            self.emit("step-end", step=name, params=params, status="error",
                      error=str(error) or type(error).__name__, seconds=round(self.now() - start["t"], 3),
                      outcome=outcome)
            raise
        self.emit("step-end", step=name, params=params, status="done", seconds=round(self.now() - start["t"], 3),
                  outcome=outcome)

    def phases(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == "step-end"]
