"""QMP through qemu.qmp, with every asynchronous event recorded: the events are the point.

qemu.qmp is asyncio-based; the channel runs its client on a private event loop thread so
that events are read (and written to a JSON lines file) the moment QEMU sends them, even
while the lab is busy elsewhere, and so nothing is lost when QEMU exits right after.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import EventListener, QMPClient, QMPError, Runstate

from lab.deadline import Deadline, wait_until
from lab.errors import ChannelError

_log = logging.getLogger(__name__)
ATTEMPT_SECONDS = 2.0
MIN_ATTEMPT_SECONDS = 0.05
Answer = TypeVar("Answer")


def _matches(data: Any, pattern: Any) -> bool:
    """True when every key of `pattern` is in `data` with a matching value (recursively)."""
    if isinstance(pattern, dict):
        return isinstance(data, dict) and all(k in data and _matches(data[k], v) for k, v in pattern.items())
    return bool(data == pattern)


class QmpChannel:
    """One QMP connection; `events` holds every event seen, each with QEMU's own timestamp."""

    def __init__(self, socket_path: Path, events_log: Path, started: float) -> None:
        self.socket_path = socket_path
        self.events_log = events_log
        self.started = started
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp", daemon=True)
        self._client = QMPClient("lab")
        self._listener = EventListener()
        self._pump: concurrent.futures.Future[None] | None = None
        self.connected = False

    def _call(self, coroutine: Coroutine[Any, Any, Answer], timeout: float) -> Answer:
        """Run `coroutine` on the QMP thread's loop and wait for it, bounded by `timeout`."""
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, timeout), self._loop)
        return future.result(timeout + 1)

    def connect(self, timeout: float, peer_gone: Callable[[], bool] = lambda: False) -> None:
        """Connect, retrying until QEMU listens; stop at once when `peer_gone()` says QEMU has exited.

        Each attempt is bounded by what is left of `timeout`, and the timeout names what the last one lacked.
        """
        self._thread.start()
        self._client.register_listener(self._listener)
        deadline = Deadline(timeout)
        last_problem: list[str] = []

        def attempt() -> bool | None:
            if peer_gone():
                raise ChannelError(f"QEMU exited before QMP on {self.socket_path} answered")
            seconds = max(min(ATTEMPT_SECONDS, deadline.remaining), MIN_ATTEMPT_SECONDS)
            try:
                self._call(self._connect_afresh(), seconds)
            except TimeoutError:
                if self.socket_path.exists():
                    lacking = "no QMP greeting" if self._client.greeting is None else "no answer to qmp_capabilities"
                    last_problem[:] = [f"{lacking} within {seconds:.1f}s of connecting"]
                return None
            except (OSError, QMPError) as error:
                last_problem[:] = [str(error)]
                return None
            except AssertionError:
                # qemu.qmp asserts RUNNING once the session is up; a peer that hangs up right after the
                # handshake has already moved it to DISCONNECTING. The session was made: keep its events.
                if self._client.runstate is not Runstate.DISCONNECTING:
                    raise
            return True

        wait_until(attempt, timeout, f"QMP on {self.socket_path}", lambda: last_problem)
        _log.debug("QMP connected on %s", self.socket_path)
        self.connected = True
        self._pump = asyncio.run_coroutine_threadsafe(self._record_events(), self._loop)

    async def _connect_afresh(self) -> None:
        """One attempt from IDLE: an attempt cut short in qemu.qmp's own cleanup leaves the client
        DISCONNECTING, where every later connect fails with a StateError until disconnect() is awaited."""
        if self._client.runstate is Runstate.DISCONNECTING:
            with contextlib.suppress(QMPError, EOFError, OSError):
                await self._client.disconnect()
        await self._client.connect(str(self.socket_path))

    def _record(self, event: Any) -> None:
        record = dict(event)
        record["lab_seconds"] = round(time.monotonic() - self.started, 6)
        with self._lock:
            self.events.append(record)
        with self.events_log.open("a") as log:
            log.write(json.dumps(record) + "\n")

    async def _record_events(self) -> None:
        while True:
            self._record(await self._listener.get())

    async def _drain(self) -> None:
        """What QEMU sent before it went away and the pump has not recorded yet (a SHUTDOWN right before exit)."""
        while not self._listener.empty():
            self._record(await self._listener.get())

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        try:
            return self._call(self._client.execute(command, arguments), timeout)
        except QMPError as error:
            raise ChannelError(f"QMP {command} failed: {error}") from error
        except TimeoutError as error:
            raise ChannelError(f"QMP {command} got no answer within {timeout}s") from error

    def seen(self, name: str, match: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == name and _matches(e.get("data", {}), match or {})]

    def wait_event(
        self, name: str, timeout: float, match: dict[str, Any] | None = None,
        last_seen: Callable[[], list[str]] | None = None,
    ) -> dict[str, Any]:
        """The first event `name` whose data matches `match` (already seen ones count)."""
        described = f"QMP event {name}" + (f" matching {match}" if match else "")
        return wait_until(lambda: next(iter(self.seen(name, match)), None), timeout, described, last_seen)

    def close(self) -> None:
        """Stop reading; safe to call twice and after QEMU has gone (disconnect re-raises its EOF). Every event
        QEMU sent is recorded: the connection is closed first, then what the pump had not taken is drained
        (cancelling the pump first lost a SHUTDOWN that QEMU sent right before it exited)."""
        self.connected = False
        if not self._thread.is_alive():
            self._loop.close()
            return
        _log.debug("QMP disconnecting from %s", self.socket_path)
        with contextlib.suppress(QMPError, EOFError, TimeoutError, OSError, asyncio.CancelledError):
            self._call(self._client.disconnect(), 2)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                self._call(self._drain(), 2)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
