"""The guest's serial console: a unix socket QEMU serves, driven with pexpect.

Every line read is kept with the time it arrived, so that console milestones can be placed
on the run's timeline next to QMP events and PSCI calls.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pexpect
from pexpect.fdpexpect import fdspawn

from lab.deadline import Deadline, wait_until
from lab.errors import ChannelError, WaitTimeout

KERNEL_LINE = re.compile(r"\[\s*\d+\.\d+\] [^\n]*\n")


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
        self._socket: socket.socket | None = None
        self._spawn: fdspawn | None = None
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
        self._spawn = fdspawn(self._socket.fileno(), encoding="utf-8", codec_errors="replace",
                              maxread=65536, searchwindowsize=None)

    def _record(self, text: str) -> None:
        now = time.monotonic() - self.started
        pieces = (self._partial + text.replace("\r", "")).split("\n")
        self._partial = pieces.pop()
        self.lines.extend((now, line) for line in pieces)

    def last_lines(self, count: int = 5) -> list[str]:
        tail = [line for _, line in self.lines[-count:]]
        return [*tail, self._partial] if self._partial else tail

    @property
    def _peer(self) -> fdspawn:
        if self._spawn is None:
            raise ChannelError("serial console used before connect()")
        return self._spawn

    def expect(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        """Wait for a regular expression on the console (raw text, kernel lines included)."""
        return self.read_until(lambda text: re.search(pattern, text), timeout, what, raw=True)

    def read_until(self, found, timeout: float, what: str, raw: bool = False):
        """Read line by line until `found(text)` is truthy; text excludes kernel lines unless raw."""
        deadline = Deadline(timeout)
        seen = ""
        while True:
            if self.closed:
                raise ChannelError(f"console closed (QEMU exited) while waiting for {what}")
            try:
                self._peer.expect(["\n", pexpect.EOF], timeout=max(deadline.remaining, 0.01))
            except pexpect.TIMEOUT:
                raise WaitTimeout(what, timeout, self.last_lines()) from None
            chunk = self._peer.before + (self._peer.after if isinstance(self._peer.after, str) else "")
            self._record(chunk)
            if self._peer.after is pexpect.EOF:
                self.closed = True
            seen += chunk
            result = found(seen.replace("\r", "") if raw else without_kernel_lines(seen))
            if result:
                return result
            if deadline.expired:
                raise WaitTimeout(what, timeout, self.last_lines())

    def drain_until_closed(self, timeout: float, what: str) -> None:
        """Keep reading (and recording) until QEMU closes the console."""
        deadline = Deadline(timeout)
        while not self.closed:
            try:
                index = self._peer.expect(["\n", pexpect.EOF], timeout=max(deadline.remaining, 0.01))
            except pexpect.TIMEOUT:
                raise WaitTimeout(what, timeout, self.last_lines()) from None
            self._record(self._peer.before + ("\n" if index == 0 else ""))
            self.closed = index == 1

    def send_line(self, text: str) -> None:
        if self.closed:
            raise ChannelError("cannot type into the console: QEMU has exited")
        self._peer.send(text + "\r")

    def close(self) -> None:
        if self._partial:
            self._record("\n")
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.closed = True
