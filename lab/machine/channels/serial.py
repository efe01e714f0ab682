"""The guest's serial console: a unix socket QEMU serves, read and written directly.

Every line read is kept with the time it arrived, so that console milestones can be placed
on the run's timeline next to QMP events and PSCI calls.

The reader blocks in `recv` until QEMU sends something or the wait's deadline comes (no polling),
takes whatever has arrived in one read, and looks at each line once: a wait for a console line
tests each new line, and a wait for a command's framed output tests the text only when a line
that is not a kernel message has come. Lines that arrive after what a wait was waiting for are
kept for the next wait.
"""

from __future__ import annotations

import codecs
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lab.deadline import Deadline, wait_until
from lab.errors import ChannelError, WaitTimeout

KERNEL_LINE = re.compile(r"\[\s*\d+\.\d+\] [^\n]*\n")
READ_BYTES = 65536
SEND_SECONDS = 10.0
"""QEMU takes console input as fast as the guest's UART does; a send that long stuck means a hung QEMU."""
T = TypeVar("T")


def without_kernel_lines(text: str) -> str:
    """Remove kernel log lines, including ones printed into the middle of a userspace line."""
    return KERNEL_LINE.sub("", text.replace("\r", ""))


class SerialConsole:
    """Reads and writes the guest console; every wait is bounded and names what it waited for."""

    def __init__(self, socket_path: Path, started: float) -> None:
        self.socket_path = socket_path
        self.started = started
        self.lines: list[tuple[float, str]] = []
        self._partial = ""
        self._unread: deque[str] = deque()
        """Lines (each with its newline; the last one without, once QEMU closed the console) no wait has taken yet."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._socket: socket.socket | None = None
        self.closed = False

    def connect(self, timeout: float) -> None:
        def attempt() -> socket.socket | None:
            candidate = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                candidate.connect(str(self.socket_path))
            except OSError:
                candidate.close()
                return None
            return candidate

        self._socket = wait_until(attempt, timeout, f"the serial console socket {self.socket_path}")

    def last_lines(self, count: int = 5) -> list[str]:
        tail = [line for _, line in self.lines[-count:]]
        return [*tail, self._partial] if self._partial else tail

    @property
    def _peer(self) -> socket.socket:
        if self._socket is None:
            raise ChannelError("serial console used before connect()")
        return self._socket

    def _receive(self, deadline: Deadline) -> bool:
        """One read of whatever QEMU has sent, recorded and queued line by line; False if the deadline came first."""
        peer = self._peer
        peer.settimeout(max(deadline.remaining, 0.001))
        try:
            data = peer.recv(READ_BYTES)
        except TimeoutError:
            return False
        except OSError:
            data = b""
        now = time.monotonic() - self.started
        text = self._decoder.decode(data, final=not data).replace("\r", "")
        pieces = (self._partial + text).split("\n")
        self._partial = pieces.pop()
        self.lines.extend((now, line) for line in pieces)
        self._unread.extend(f"{line}\n" for line in pieces)
        if not data:
            self.closed = True
            if self._partial:
                self._unread.append(self._partial)
        return True

    def _next_line(self, deadline: Deadline, what: str, timeout: float) -> str:
        """The next line no wait has taken, read from QEMU if need be."""
        while not self._unread:
            if self.closed:
                raise ChannelError(f"console closed (QEMU exited) while waiting for {what}")
            if deadline.expired or not self._receive(deadline):
                raise WaitTimeout(what, timeout, self.last_lines())
        return self._unread.popleft()

    def expect(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        """Wait for a regular expression within one console line (kernel lines included)."""
        compiled = re.compile(pattern)
        deadline = Deadline(timeout)
        while True:
            match = compiled.search(self._next_line(deadline, what, timeout))
            if match is not None:
                return match

    def read_until(self, found: Callable[[str], T | None], timeout: float, what: str) -> T:
        """Read until `found(text)` is truthy; `text` is everything read by this wait, kernel lines removed."""
        deadline = Deadline(timeout)
        text = ""
        while True:
            line = without_kernel_lines(self._next_line(deadline, what, timeout))
            if not line:
                continue
            text += line
            result = found(text)
            if result:
                return result

    def drain_until_closed(self, timeout: float, what: str) -> None:
        """Keep reading (and recording) until QEMU closes the console."""
        deadline = Deadline(timeout)
        self._unread.clear()
        while not self.closed:
            if deadline.expired or not self._receive(deadline):
                raise WaitTimeout(what, timeout, self.last_lines())
            self._unread.clear()

    def send_line(self, text: str) -> None:
        if self.closed:
            raise ChannelError("cannot type into the console: QEMU has exited")
        peer = self._peer
        peer.settimeout(SEND_SECONDS)
        try:
            peer.sendall(f"{text}\r".encode())
        except TimeoutError as error:
            raise WaitTimeout("QEMU to take console input", SEND_SECONDS, self.last_lines()) from error
        except OSError as error:
            raise ChannelError(f"cannot type into the console: {error}") from error

    def close(self) -> None:
        if self._partial:
            self.lines.append((time.monotonic() - self.started, self._partial))
            self._partial = ""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.closed = True
