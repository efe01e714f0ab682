"""The lab's error hierarchy: every error carries the data a user needs to act on it.

`LabError.exit_code` decides the process exit status: 2 for usage and set-up problems
(nothing was judged), 1 for a run that ran and failed. Messages are shown on one line through
`printable`, since they quote what the lab read: a guest's console, a file someone else wrote.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def printable(text: str) -> str:
    """`text` as one line that a terminal, a log or an XML file shows as it is.

    C0 controls, line breaks included, become their pictures (a guest's ANSI colours show as ␛[31m, a
    newline as ␊); the other characters that could break the line or drive a terminal become �.
    """
    return _UNPRINTABLE.sub(lambda m: chr(0x2400 + ord(m[0])) if m[0] < " " else "\N{REPLACEMENT CHARACTER}", text)


class LabError(Exception):
    """Base of every error the `lab` command reports as one line, without a traceback."""

    exit_code = 2
    lab_fault = False
    """The lab or its infrastructure failed (set-up, a host lost, a full disk), not the guest: a run it ends
    is an ERROR, not a FAIL, and `lab scenario --bisect-exit` skips the revision rather than blaming it."""


class UsageError(LabError):
    """The user asked for something that does not exist or does not make sense."""


class SetupError(LabError):
    """Something the lab needs on this host is missing (QEMU, an image, a package)."""

    lab_fault = True


LAST_SEEN = "; last seen: "
"""Where a timeout's message ends and the console lines it saw last begin."""


class WaitTimeout(LabError):
    """A bounded wait ran out: says what it waited for and what it saw last."""

    exit_code = 1

    def __init__(self, what: str, seconds: float, last_seen: Sequence[str] = ()) -> None:
        self.what = what
        self.seconds = seconds
        self.last_seen = list(last_seen)
        tail = " | ".join(printable(line.strip()) for line in self.last_seen[-3:] if line.strip())
        message = f"timed out after {seconds:.1f}s waiting for {what}"
        super().__init__(f"{message}{LAST_SEEN}{tail}" if tail else message)


class MachineError(LabError):
    """QEMU failed to start or died unexpectedly; carries its command line and output."""

    exit_code = 1

    def __init__(self, message: str, command: Sequence[str] = (), output: str = "") -> None:
        self.command = list(command)
        self.output = output
        last = output.strip().splitlines()[-1] if output.strip() else ""
        super().__init__(f"{message}: {last}" if last else message)


class ChannelError(LabError):
    """A channel to the guest (serial, QMP, gdbstub, SSH) broke or answered nonsense."""

    exit_code = 1


class HostLost(ChannelError):
    """The lab host that runs the guest's QEMU went away: the infrastructure failed, not the guest."""

    lab_fault = True


class KernelTrouble(LabError):
    """The guest's kernel printed a panic, an Oops or a BUG, then fell silent: a console wait ended
    early rather than at its timeout. Quotes the first such line."""

    exit_code = 1

    def __init__(self, what: str, line: str, quiet: float, last_seen: Sequence[str] = (),
                 seen_at: float | None = None, stopped_at: float | None = None) -> None:
        self.what = what
        self.line = line.strip()
        self.quiet = quiet
        self.last_seen = list(last_seen)
        self.seen_at = seen_at
        """When the line arrived, in seconds since the run started."""
        self.stopped_at = stopped_at
        """When the wait gave up, in seconds since the run started."""
        super().__init__(f"kernel trouble while waiting for {what}: {self.line!r}, "
                         f"then {quiet:g}s of silence")


class RunDirectoryFull(LabError):
    """The run directory's filesystem is full: the run stops, and its results go into the room kept for them."""

    lab_fault = True

    def __init__(self, error: OSError) -> None:
        super().__init__(f"the run directory's filesystem is full ({error.strerror}: {error.filename or 'a run file'})")
