"""Endurance cycles, as fwts's `s4 --s4-multiple` runs them: a `repeat` whose rounds stay awake for a
delay that goes from a minimum to a maximum in steps (and round again), and that stops after N
rounds in a row have failed, as pm-graph's `-maxfail` does. Each round is recorded as a cycle: its
awake delay, its boots (whose kernel phases result.json holds) and whether it met its expectations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab.judge.observations import Observations
from lab.judge.verdict import step_expectations


@dataclass(frozen=True)
class AwakeDelays:
    """Seconds a round stays awake before its steps: minimum, maximum and the step between them."""

    least: float
    most: float
    step: float

    def delay(self, round_number: int) -> float:
        """The delay of round `round_number` (from 1): least, least + step, … up to most, then least again."""
        count = int((self.most - self.least) // self.step) + 1 if self.step > 0 else 1
        return round(self.least + ((round_number - 1) % count) * self.step, 3)

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> AwakeDelays | None:
        if params is None:
            return None
        least = float(params["min"])
        return cls(least, float(params.get("max", least)), float(params.get("step", 0)))


@dataclass
class Cycle:
    round: int
    awake_seconds: float
    boots: list[str] = field(default_factory=list)
    passed: bool = True
    failed: list[str] = field(default_factory=list)
    """The expectations the round missed, as `name: detail`."""


def run_rounds(params: dict[str, Any], observations: Observations, awake: Callable[[float], None],
               round_steps: Callable[[int, float], None]) -> tuple[list[Cycle], int | None]:
    """Run the rounds; returns each round's cycle and the round after which the repeat stopped early (or None).

    `awake` keeps the guest awake for a delay (a running guest; nothing to wait for otherwise) and
    `round_steps` runs one round's steps (given its number and its awake delay).
    """
    delays = AwakeDelays.from_params(params.get("awake"))
    stop_after = params.get("stop_after_failures")
    cycles: list[Cycle] = []
    failing = 0
    for round_number in range(1, params["times"] + 1):
        delay = delays.delay(round_number) if delays else 0.0
        mark = observations.mark()
        awake(delay)
        try:
            round_steps(round_number, delay)
        finally:
            seen = observations.since(mark)
            missed = [c for c in step_expectations(seen) if not c.passed]
            cycles.append(Cycle(round_number, delay, [b.boot for b in seen.boots], not missed,
                                [f"{c.name}: {c.detail}" for c in missed]))
        failing = failing + 1 if missed else 0
        if stop_after is not None and failing >= stop_after:
            return cycles, round_number
    return cycles, None


def keep_awake(seconds: float, running: bool) -> None:
    """Let a running guest stay awake `seconds` before the round hibernates it."""
    if running and seconds > 0:
        time.sleep(seconds)
