"""The guest's serial console: a unix socket QEMU serves, driven with pexpect.

Every line read is kept with the time it arrived, so that console milestones can be placed
on the run's timeline next to QMP events and PSCI calls.

Every wait fails fast on kernel trouble: once the kernel has printed a panic, an Oops or a BUG
on this console, a wait that then hears nothing for `trouble_quiet` seconds raises KernelTrouble
(quoting the line) instead of running on to its timeout. A guest still talking after its trouble
(the rest of an Oops report, a kernel that carries on) keeps the wait going. Where a panic is the
point (a `crash` step), `expecting_trouble()` turns this off.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pexpect
from pexpect.fdpexpect import fdspawn

from lab.deadline import Deadline, wait_until
from lab.errors import ChannelError, KernelTrouble, UsageError, WaitTimeout
from lab.vocabulary import KERNEL_FAULT

KERNEL_LINE = re.compile(r"\[\s*\d+\.\d+\] [^\n]*\n")
SYSTEMD_STATUS_LINE = re.compile(r"\[\s*(?:OK|FAILED|DEPEND|TIME|INFO|WARN|\*+)\s*\] [^\n]*\n")
"""systemd's own status lines on the console (`[  OK  ] Started …`), as a system guest prints them
while it boots, hibernates and resumes; like kernel lines, they may land in the middle of a command's output."""
LAB_SYSTEM_LINE = re.compile(r"lab-system: [^\n]*\n")
"""A system image's own console marks (images/system): printed by its units, never part of a command's output."""
TERMINAL_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|\][^\x07\x1b]*(?:\x07|\x1b\\))")
"""Colour and cursor sequences (CSI) and terminal titles or shell-integration marks (OSC)."""
TROUBLE_QUIET_SECONDS = 5.0
"""How long the console must stay silent after kernel trouble before a wait gives up (the default)."""
TROUBLE_QUIET_ENV = "LAB_KERNEL_TROUBLE_QUIET"
FAULT_POLL_SECONDS = 2.0
Found = TypeVar("Found")
"""How often a silent console asks whether QEMU itself is at fault (stopped, paused, gone)."""


def trouble_quiet_seconds(configured: float | None = None) -> float:
    """The quiet time after kernel trouble: `configured` (a scenario's `kernel_trouble_quiet`) when
    given, else $LAB_KERNEL_TROUBLE_QUIET, else TROUBLE_QUIET_SECONDS."""
    if configured is not None:
        return float(configured)
    text = os.environ.get(TROUBLE_QUIET_ENV, "").strip()
    if not text:
        return TROUBLE_QUIET_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 3600:
        raise UsageError(f"{TROUBLE_QUIET_ENV}={text!r}: give a number of seconds, more than 0 and at most 3600")
    return seconds


def without_kernel_lines(text: str) -> str:
    """Remove kernel log lines and systemd's status lines (with their colours), including ones printed
    into the middle of a userspace line."""
    plain = TERMINAL_ESCAPE.sub("", text.replace("\r", ""))
    return LAB_SYSTEM_LINE.sub("", SYSTEMD_STATUS_LINE.sub("", KERNEL_LINE.sub("", plain)))


class _Arrivals:
    """pexpect's `logfile_read`: notes when the console last said anything, a partial line included."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def write(self, _text: str) -> None:
        self.last = time.monotonic()

    def flush(self) -> None:
        pass


class SerialConsole:
    """Reads and writes the guest console; every wait is bounded and names what it waited for.

    `trouble_quiet`: seconds of silence after kernel trouble that end any wait (None: never).
    """

    def __init__(self, socket_path: Path, started: float,
                 trouble_quiet: float | None = TROUBLE_QUIET_SECONDS) -> None:
        self.socket_path = socket_path
        self.started = started
        self.trouble_quiet = trouble_quiet
        self.lines: list[tuple[float, str]] = []
        self.trouble: tuple[float, str] | None = None
        """The first kernel panic, Oops or BUG line on this console, with the time it arrived."""
        self._partial = ""
        self._socket: socket.socket | None = None
        self._spawn: fdspawn[str] | None = None
        self._arrivals = _Arrivals()
        self._trouble_expected = 0
        self.closed = False
        self.vmm_fault: Callable[[], str | None] | None = None
        """Asked after every FAULT_POLL_SECONDS of silence: what is wrong with QEMU (stopped, paused on a
        full disk), so that a wait ends when nothing can ever answer it, not at its timeout."""

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
        self._spawn.logfile_read = self._arrivals

    def _record(self, text: str) -> None:
        now = time.monotonic() - self.started
        pieces = (self._partial + text.replace("\r", "")).split("\n")
        self._partial = pieces.pop()
        self.lines.extend((now, line) for line in pieces)
        if self.trouble is None:
            self.trouble = next(((now, line.strip()) for line in pieces if KERNEL_FAULT.search(line)), None)

    @contextmanager
    def expecting_trouble(self) -> Iterator[None]:
        """Waits inside do not fail fast on kernel trouble: the caller made the kernel panic on purpose."""
        self._trouble_expected += 1
        try:
            yield
        finally:
            self._trouble_expected -= 1

    def _quiet_left(self, wait_started: float) -> float | None:
        """Seconds until the silence after kernel trouble ends this wait; None when it cannot."""
        if self.trouble is None or self.trouble_quiet is None or self._trouble_expected:
            return None
        silent_since = max(self._arrivals.last, wait_started)
        return silent_since + self.trouble_quiet - time.monotonic()

    def _next_line(self, deadline: Deadline, timeout: float, what: str, wait_started: float) -> bool:
        """Read through the next newline (True) or to EOF (False), recording it.

        Raises WaitTimeout at the deadline, or KernelTrouble once the console has been silent for
        `trouble_quiet` seconds after kernel trouble (silence counted from `wait_started` at the
        earliest, so that every wait gives the guest that long to speak).
        """
        while True:
            quiet_left = self._quiet_left(wait_started)
            if quiet_left is not None and quiet_left <= 0 and self.trouble and self.trouble_quiet is not None:
                raise KernelTrouble(what, self.trouble[1], self.trouble_quiet, self.last_lines(),
                                    seen_at=self.trouble[0], stopped_at=time.monotonic() - self.started)
            slice_ = min(deadline.remaining, FAULT_POLL_SECONDS)
            slice_ = slice_ if quiet_left is None else min(slice_, quiet_left)
            try:
                index = self._peer.expect(["\n", pexpect.EOF], timeout=max(slice_, 0.01))
            except pexpect.TIMEOUT:
                if deadline.expired:
                    raise WaitTimeout(what, timeout, self.last_lines()) from None
                if self.vmm_fault is not None and (fault := self.vmm_fault()):
                    raise ChannelError(f"{fault} while waiting for {what}") from None
                continue
            self._record((self._peer.before or "") + ("\n" if index == 0 else ""))
            if index == 1:
                self.closed = True
            return index == 0

    def last_lines(self, count: int = 5) -> list[str]:
        tail = [line for _, line in self.lines[-count:]]
        return [*tail, self._partial] if self._partial else tail

    @property
    def _peer(self) -> fdspawn[str]:
        if self._spawn is None:
            raise ChannelError("serial console used before connect()")
        return self._spawn

    def expect(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        """Wait for a regular expression on the console (raw text, kernel lines included)."""
        return self.read_until(lambda text: re.search(pattern, text), timeout, what, raw=True)

    def read_until(self, found: Callable[[str], Found | None], timeout: float, what: str, raw: bool = False) -> Found:
        """Read line by line until `found(text)` is truthy; text excludes kernel lines unless raw."""
        started = time.monotonic()
        deadline = Deadline(timeout)
        seen = ""
        while True:
            if self.closed:
                raise ChannelError(f"console closed (QEMU exited) while waiting for {what}")
            newline = self._next_line(deadline, timeout, what, started)
            seen += (self._peer.before or "") + ("\n" if newline else "")
            result = found(seen.replace("\r", "") if raw else without_kernel_lines(seen))
            if result:
                return result
            if deadline.expired:
                raise WaitTimeout(what, timeout, self.last_lines())

    def drain_until_closed(self, timeout: float, what: str) -> None:
        """Keep reading (and recording) until QEMU closes the console."""
        started = time.monotonic()
        deadline = Deadline(timeout)
        while not self.closed:
            self._next_line(deadline, timeout, what, started)

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
