"""GuestShell and SerialConsole against a fake guest over a unix socket.

The fake echoes every typed line like a terminal, runs nothing, and answers the framed
command with a result whose base64 is cut by a kernel message, as a real console can be.
"""

from __future__ import annotations

import base64
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from lab.errors import ChannelError, WaitTimeout
from lab.machine.channels.serial import SerialConsole, without_kernel_lines
from lab.machine.channels.shell import GuestShell


class FakeGuest:
    def __init__(self, path: Path, answer: bool = True, status: int = 3) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.answer, self.status = answer, status
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        peer, _ = self.server.accept()
        with peer:
            peer.sendall(b"[    1.000000] booting\r\nlab-init: ready boot_id=x\r\n~ # ")
            buffer, chunks = b"", {}
            while True:
                data = peer.recv(4096)
                if not data:
                    return
                buffer += data
                while b"\r" in buffer:
                    line, buffer = buffer.split(b"\r", 1)
                    text = line.decode()
                    peer.sendall(line + b"\r\n")
                    if match := re.search(r"printf %s '([^']*)' >> /run/lab/(\w+)\.b64", text):
                        chunks.setdefault(match.group(2), []).append(match.group(1))
                    elif (match := re.search(r"base64 -d /run/lab/(\w+)\.b64", text)) and self.answer:
                        token = match.group(1)
                        command = base64.b64decode("".join(chunks.pop(token))).decode()
                        self.commands.append(command)
                        encoded = base64.b64encode(f"ran: {command}\n".encode() * 20).decode()
                        lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
                        cut = lines[1][:30] + "[   12.345678] virtio_blk: interrupting\r\n" + lines[1][30:]
                        body = "\r\n".join([lines[0], cut, *lines[2:]])
                        peer.sendall(f"LAB-RC-{token}:{self.status}\r\n{body}\r\n"
                                     f"LAB-END-{token}\r\n~ # ".encode())

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sockets(tmp_path: Path) -> Path:
    return tmp_path / "console.sock"


def _console(path: Path) -> SerialConsole:
    console = SerialConsole(path, time.monotonic())
    console.connect(2)
    return console


def test_command_output_survives_echo_and_kernel_lines(sockets):
    guest = FakeGuest(sockets)
    console = _console(sockets)
    try:
        console.expect("lab-init: ready", 2, "ready")
        command = "echo 'quotes' \"and\" $vars; " + "x" * 1000
        result = GuestShell(console).run(command, timeout=5)
        assert guest.commands == [command]
        assert result.status == 3
        assert result.output == f"ran: {command}\n" * 20
    finally:
        console.close()
        guest.close()


def test_console_lines_are_recorded_with_times(sockets):
    guest = FakeGuest(sockets)
    console = _console(sockets)
    try:
        console.expect("lab-init: ready", 2, "ready")
        texts = [text for _, text in console.lines]
        assert "[    1.000000] booting" in texts
        assert all(seconds >= 0 for seconds, _ in console.lines)
    finally:
        console.close()
        guest.close()


def test_silent_guest_times_out_naming_the_command_and_last_lines(sockets):
    guest = FakeGuest(sockets, answer=False)
    console = _console(sockets)
    try:
        with pytest.raises(WaitTimeout) as caught:
            GuestShell(console).run("sleep 100", timeout=0.5)
        assert "`sleep 100`" in str(caught.value)
        assert "last seen" in str(caught.value)
    finally:
        console.close()
        guest.close()


def test_guest_that_goes_away_is_a_channel_error(sockets):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sockets))
    server.listen(1)

    def hang_up() -> None:
        peer, _ = server.accept()
        peer.sendall(b"partial output")
        peer.close()

    threading.Thread(target=hang_up, daemon=True).start()
    console = _console(sockets)
    try:
        with pytest.raises(ChannelError, match="console closed"):
            console.expect("never", 2, "something")
        assert console.last_lines()[-1] == "partial output"
    finally:
        console.close()
        server.close()


def test_kernel_lines_are_removed_even_mid_line():
    text = "QUJD[    5.100000] msg one\r\nREVG\r\n[   6.0] whole line\r\nrest\r\n"
    assert without_kernel_lines(text) == "QUJDREVG\nrest\n"


def test_systemd_status_lines_and_escapes_are_removed_even_mid_line():
    """A system guest's systemd prints coloured status lines on the console while a command's output
    is on its way, and systemd's shell integration marks prompts with OSC sequences."""
    text = ("QUJD\x1b[0;32m[  OK  ]\x1b[0m Finished \x1b[0;1;39msystemd-hibernate.service\x1b[0m.\r\nREVG\r\n"
            "[FAILED] Failed to start x.service.\r\n\x1b]3008;start=1;type=shell\x07rest\r\n")
    assert without_kernel_lines(text) == "QUJDREVG\nrest\n"
