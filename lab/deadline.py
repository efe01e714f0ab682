"""One deadline type and one polling wait for every bounded wait in the lab."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from lab.errors import WaitTimeout

T = TypeVar("T")


class Deadline:
    """A point on the monotonic clock; waits ask it how long they may still block."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    last_seen: Callable[[], list[str]] | None = None,
    interval: float = 0.05,
) -> T:
    """Poll `check` until it returns something other than None; give it one last try at the end.

    On timeout raise WaitTimeout naming `what` and, when given, the last lines seen.
    """
    deadline = Deadline(timeout)
    while True:
        result = check()
        if result is not None:
            return result
        if deadline.expired:
            break
        time.sleep(min(interval, deadline.remaining))
    result = check()
    if result is not None:
        return result
    raise WaitTimeout(what, timeout, last_seen() if last_seen else [])
