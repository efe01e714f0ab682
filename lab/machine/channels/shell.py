"""Shell commands in the guest over the serial console, framed so that nothing can fool them.

The command travels base64-encoded (no quoting, no terminal line editing surprises), runs
from a file, and its output comes back base64-encoded between sentinels that never appear
in the echoed command line. Kernel messages printed into the middle of the output are
removed before decoding: base64 has no `[`, so a kernel line is always recognisable.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass

from lab.deadline import Deadline
from lab.errors import ChannelError, WaitTimeout
from lab.machine.channels.serial import SerialConsole

CHUNK = 384


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str


class GuestShell:
    """`run`, `succeed` and `start` for shell commands on the guest console (like NixOS's driver)."""

    def __init__(self, console: SerialConsole, patience: float = 1.0) -> None:
        self.console = console
        self.patience = patience
        """Every command's timeout is this many times longer (a guest on an emulated host is slower)."""

    def _send(self, command: str) -> str:
        token = secrets.token_hex(6)
        encoded = base64.b64encode(command.encode()).decode()
        path = f"/run/lab/{token}"
        self.console.send_line("mkdir -p /run/lab")
        for offset in range(0, len(encoded), CHUNK):
            self.console.send_line(f"printf %s '{encoded[offset:offset + CHUNK]}' >> {path}.b64")
        self.console.send_line(
            f"base64 -d {path}.b64 > {path}.sh && sh {path}.sh > {path}.out 2>&1;"
            f" printf 'LAB-%s-{token}:%d\\n' RC $?; base64 {path}.out;"
            f" printf 'LAB-%s-{token}\\n' END; rm -f {path}.*"
        )
        return token

    def start(self, command: str) -> str:
        """Send a command without waiting for it (e.g. one that hibernates); returns its token."""
        return self._send(command)

    def wait(self, token: str, command: str, timeout: float) -> CommandResult:
        """Wait for the framed result of a command sent with `start`."""
        pattern = re.compile(rf"LAB-RC-{token}:(\d+)\n(.*?)LAB-END-{token}\n", re.DOTALL)
        match = self.console.read_until(pattern.search, timeout, f"the guest to finish `{command}`")
        try:
            output = base64.b64decode("".join(match.group(2).split()), validate=True)
        except ValueError as error:
            raise ChannelError(f"garbled output from `{command}`: {error}") from error
        return CommandResult(command, int(match.group(1)), output.decode(errors="replace"))

    def run(self, command: str, timeout: float = 30) -> CommandResult:
        """Run a command and wait for its result (`timeout` stretched by the shell's patience)."""
        return self.wait(self._send(command), command, timeout * self.patience)

    def succeed(self, command: str, timeout: float = 30) -> str:
        """Run a command that must exit 0; its output."""
        result = self.run(command, timeout)
        if result.status != 0:
            raise ChannelError(f"`{command}` exited {result.status} in the guest: {result.output.strip()[-200:]}")
        return result.output

    def wait_responsive(self, timeout: float) -> None:
        """Wait until the guest shell answers a trivial command (it may be busy resuming).

        A probe typed before the shell reads its input can be lost, so probes are repeated; but a
        slow guest (a nested KVM guest, a loaded host) answers each of them late, so the answer to
        any probe counts, and the interval between probes doubles rather than flooding its input.
        """
        deadline = Deadline(timeout)
        tokens: list[str] = []
        interval = 3.0
        while True:
            tokens.append(self._send("true"))
            answered = re.compile(rf"LAB-END-(?:{'|'.join(tokens)})\n")
            try:
                self.console.read_until(answered.search, min(interval, max(deadline.remaining, 0.1)),
                                        "the guest shell to answer")
                return
            except WaitTimeout:
                if deadline.expired:
                    raise WaitTimeout("the guest shell to answer", timeout, self.console.last_lines()) from None
            interval = min(interval * 2, 24.0)
