"""A scripted gdbstub peer on the other end of a real socket, for the GDB client and the PSCI layer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from lab.machine.channels.gdbstub import GdbRemote, checksum, decode_payload

Handler = Callable[[str], list[bytes] | None]


def raw_packet(body: bytes) -> bytes:
    """A packet with the body sent as is (tests choose their own escaping / run-length encoding)."""
    return b"$" + body + b"#" + f"{checksum(body):02x}".encode()


class FakeStub:
    """Plays the stub: records every packet it gets, acks it (in ack mode), sends what `handler` says.

    An interrupt byte reaches `handler` (and `received`) as `^C`.

    `handler` returning None means "never answer"; a `-` from the client makes it send `nak_reply`;
    `nak_next` makes it refuse the next packet with `-` instead of answering.
    """

    def __init__(self, sock: socket.socket, handler: Handler, nak_reply: bytes = b"") -> None:
        self.sock = sock
        self.handler = handler
        self.nak_reply = nak_reply
        self.ack_mode = True
        self.nak_next = False
        self.received: list[str] = []
        self.acks: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while buffer:
                if buffer[:1] == b"\x03":
                    self.received.append("^C")
                    buffer = buffer[1:]
                    for reply in self.handler("^C") or []:
                        self.sock.sendall(reply)
                    continue
                if buffer[:1] in (b"+", b"-"):
                    self.acks.append(buffer[:1].decode())
                    if buffer[:1] == b"-" and self.nak_reply:
                        self.sock.sendall(self.nak_reply)
                    buffer = buffer[1:]
                    continue
                end = buffer.find(b"#")
                if buffer[:1] != b"$" or end < 0 or len(buffer) < end + 3:
                    break
                payload = decode_payload(buffer[1:end])
                buffer = buffer[end + 3 :]
                self.received.append(payload)
                if self.nak_next:
                    self.nak_next = False
                    self.sock.sendall(b"-")
                    continue
                if self.ack_mode:
                    self.sock.sendall(b"+")
                replies = self.handler(payload)
                if payload == "QStartNoAckMode":
                    self.ack_mode = False
                for reply in replies or []:
                    self.sock.sendall(reply)


def connected(handler: Handler, timeout: float = 1.0, nak_reply: bytes = b"") -> tuple[GdbRemote, FakeStub]:
    client_end, stub_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return GdbRemote(client_end, timeout), FakeStub(stub_end, handler, nak_reply)
