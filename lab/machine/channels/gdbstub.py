"""A GDB remote serial protocol client, just big enough to trap guest instructions through QEMU's gdbstub.

Written here because the lab needs only breakpoints, register access, stepping and stop replies, with every
wait bounded and QEMU exiting reported as its own outcome; the available libraries either drive a gdb
process or block without timeouts. One `GdbRemote` is meant to be used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from lab.deadline import Deadline
from lab.errors import ChannelError, WaitTimeout

# aarch64 register numbers in GDB's (and QEMU's) core register layout.
AARCH64_PC = 32
AARCH64_CPSR = 33
_AARCH64_CORE_REGISTERS = 34
_INTERRUPT = b"\x03"
_MAX_NAK_RESENDS = 3


def register_size(number: int) -> int:
    """Bytes of an aarch64 core register on the wire: cpsr is 32-bit, the rest 64-bit."""
    return 4 if number == AARCH64_CPSR else 8


class GdbError(ChannelError):
    """The stub answered with an error or with something this client cannot use."""

    def __init__(self, message: str, sent: str = "", received: str = "") -> None:
        self.sent = sent
        self.received = received
        super().__init__(f"{message} (sent {sent!r}, received {received!r})")


class GdbPeerClosed(GdbError):
    """The stub closed the connection: for QEMU that means the emulator exited."""


class StopKind(StrEnum):
    SIGNAL = "signal"
    EXITED = "exited"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class StopReply:
    """Why the target stopped: a signal in a thread (T/S), or the whole process ended (W/X)."""

    kind: StopKind
    code: int
    raw: str
    thread: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def vcpu_index(self) -> int | None:
        """QEMU numbers threads from 1 in vCPU order; this is the 0-based vCPU index."""
        if self.thread is None:
            return None
        thread_part = self.thread.rsplit(".", 1)[-1]
        try:
            number = int(thread_part, 16)
        except ValueError:
            return None
        return number - 1 if number > 0 else None


def checksum(data: bytes | bytearray) -> int:
    return sum(data) & 0xFF


def frame(payload: str) -> bytes:
    """`$payload#cs` with the protocol's special characters escaped."""
    escaped = bytearray()
    for byte in payload.encode("latin-1"):
        if byte in b"$#}*":
            escaped += bytes((0x7D, byte ^ 0x20))
        else:
            escaped.append(byte)
    return b"$" + bytes(escaped) + b"#" + f"{checksum(escaped):02x}".encode()


def decode_payload(raw: bytes) -> str:
    """Undo `}` escaping and `*` run-length encoding of a received packet body."""
    out = bytearray()
    index = 0
    while index < len(raw):
        byte = raw[index]
        if byte == 0x7D and index + 1 < len(raw):
            out.append(raw[index + 1] ^ 0x20)
            index += 2
        elif byte == 0x2A and out and index + 1 < len(raw):
            out += bytes((out[-1],)) * (raw[index + 1] - 29)
            index += 2
        else:
            out.append(byte)
            index += 1
    return out.decode("latin-1")


def parse_stop_reply(payload: str) -> StopReply:
    """Parse `T05thread:p01.02;...`, `S05`, `W00[;process:..]` or `X09`."""
    if not payload or payload[0] not in "TSWX" or len(payload) < 3:
        raise GdbError("not a stop reply", received=payload)
    try:
        code = int(payload[1:3], 16)
    except ValueError as error:
        raise GdbError("stop reply with a bad code", received=payload) from error
    kind = {"T": StopKind.SIGNAL, "S": StopKind.SIGNAL, "W": StopKind.EXITED, "X": StopKind.TERMINATED}[payload[0]]
    fields: dict[str, str] = {}
    if payload[0] == "T":
        for item in payload[3:].split(";"):
            name, _, value = item.partition(":")
            if name:
                fields[name] = value
    return StopReply(kind=kind, code=code, raw=payload, thread=fields.get("thread"), fields=fields)


def decode_le_hex(text: str) -> int:
    """Registers travel as target-order (little-endian) bytes in hex."""
    try:
        return int.from_bytes(bytes.fromhex(text), "little")
    except ValueError as error:
        raise GdbError("register value is not hex", received=text) from error


def encode_le_hex(value: int, size: int) -> str:
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex()


class GdbRemote:
    """A connection to one gdbstub. `timeout` bounds every request that expects an answer."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self._sock = sock
        self.timeout = timeout
        self._buffer = bytearray()
        self._ack_mode = True
        self._has_vcont = False
        self.features: dict[str, str | bool] = {}
        self.last_received = ""

    @classmethod
    def connect(cls, path: str, timeout: float = 5.0) -> GdbRemote:
        """Connect to a unix-socket gdbstub and negotiate features; retries until the socket exists."""
        deadline = Deadline(timeout)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as error:
                sock.close()
                if deadline.expired:
                    raise WaitTimeout(f"gdbstub socket {path}", timeout, [str(error)]) from error
                time.sleep(min(0.05, deadline.remaining))
        remote = cls(sock, timeout)
        try:
            remote.handshake()
        except BaseException:
            remote.close()
            raise
        return remote

    @property
    def ack_mode(self) -> bool:
        return self._ack_mode

    def handshake(self) -> None:
        """Learn the stub's features, leave ack mode when allowed (saves a round trip per packet)."""
        reply = self.request("qSupported:swbreak+;vContSupported+")
        for item in reply.split(";"):
            if item.endswith(("+", "-")):
                self.features[item[:-1]] = item.endswith("+")
            elif "=" in item:
                name, _, value = item.partition("=")
                self.features[name] = value
        if self.features.get("QStartNoAckMode") is True:
            self._expect_ok("QStartNoAckMode")
            self._ack_mode = False
        self._has_vcont = self.request("vCont?").startswith("vCont")

    def close(self) -> None:
        """Also wakes a thread blocked reading this connection (shutdown does, close alone does not)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> GdbRemote:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, payload: str) -> None:
        """Send one packet without waiting for an answer (continue/step answer later with a stop reply)."""
        packet = frame(payload)
        deadline = Deadline(self.timeout)
        for _ in range(_MAX_NAK_RESENDS + 1):
            self._write(packet, payload)
            if not self._ack_mode or self._read_ack(payload, deadline):
                return
        raise GdbError("stub kept rejecting the packet", sent=payload)

    def request(self, payload: str, timeout: float | None = None) -> str:
        """Send a packet and return its reply's payload."""
        self.send(payload)
        return self.receive(payload, timeout)

    def receive(self, sent: str = "", timeout: float | None = None) -> str:
        """The next packet from the stub, skipping console-output (`O`) packets."""
        deadline = Deadline(self.timeout if timeout is None else timeout)
        while True:
            payload = self._read_packet(sent, deadline)
            if not (payload.startswith("O") and payload != "OK"):
                return payload

    def read_registers(self) -> list[int]:
        """All core registers of the selected thread (x0..x30, sp, pc, cpsr) with one `g`."""
        reply = self._checked("g")
        values: list[int] = []
        position = 0
        for number in range(_AARCH64_CORE_REGISTERS):
            width = 2 * register_size(number)
            chunk = reply[position : position + width]
            if len(chunk) < width:
                raise GdbError("register block too short for aarch64", sent="g", received=reply)
            values.append(decode_le_hex(chunk))
            position += width
        return values

    def read_register(self, number: int) -> int:
        payload = f"p{number:x}"
        reply = self._checked(payload)
        if "x" in reply:
            raise GdbError(f"register {number} unavailable", sent=payload, received=reply)
        return decode_le_hex(reply)

    def write_register(self, number: int, value: int) -> None:
        self._expect_ok(f"P{number:x}={encode_le_hex(value, register_size(number))}")

    def select_thread(self, thread: str) -> None:
        """Make `g`/`p`/`P` act on `thread`."""
        self._expect_ok(f"Hg{thread}")

    def insert_breakpoint(self, address: int, kind: int = 4) -> None:
        self._expect_ok(f"Z0,{address:x},{kind:x}")

    def resume(self) -> None:
        """Let every vCPU run; the next stop arrives through `wait_stop`."""
        self.send("vCont;c" if self._has_vcont else "c")

    def step(self, thread: str, timeout: float | None = None) -> StopReply:
        """Execute one instruction on `thread` while the other vCPUs stay stopped."""
        if self._has_vcont:
            payload = f"vCont;s:{thread}"
        else:
            self._expect_ok(f"Hc{thread}")
            payload = "s"
        self.send(payload)
        return self.wait_stop(timeout, sent=payload)

    def wait_stop(self, timeout: float | None = None, sent: str = "stop reply") -> StopReply:
        """Block until the target stops or ends; GdbPeerClosed if QEMU goes away without saying so."""
        return parse_stop_reply(self.receive(sent, timeout))

    def interrupt(self) -> None:
        """Ask a running target to stop (answered by a stop reply)."""
        self._write(_INTERRUPT, "^C")

    def detach(self) -> None:
        """Remove our breakpoints and let the target run on without us."""
        self._expect_ok("D")

    def _checked(self, payload: str) -> str:
        reply = self.request(payload)
        if reply == "" or (reply.startswith("E") and len(reply) == 3):
            raise GdbError("stub refused the request", sent=payload, received=reply)
        return reply

    def _expect_ok(self, payload: str) -> None:
        reply = self.request(payload)
        if reply != "OK":
            raise GdbError("stub did not answer OK", sent=payload, received=reply)

    def _write(self, data: bytes, sent: str) -> None:
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as error:
            raise GdbPeerClosed("gdbstub connection closed", sent=sent) from error
        except OSError as error:
            raise GdbError(f"cannot write to gdbstub: {error}", sent=sent) from error

    def _fill(self, sent: str, deadline: Deadline) -> None:
        remaining = deadline.remaining
        if remaining <= 0:
            raise WaitTimeout(f"gdbstub answer to {sent!r}", deadline.seconds, [self._buffer.decode("latin-1")])
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError as error:
            raise WaitTimeout(
                f"gdbstub answer to {sent!r}", deadline.seconds, [self._buffer.decode("latin-1")]
            ) from error
        except ConnectionResetError as error:
            raise GdbPeerClosed("gdbstub connection reset", sent=sent) from error
        if not chunk:
            raise GdbPeerClosed("gdbstub closed the connection", sent=sent, received=self._buffer.decode("latin-1"))
        self._buffer += chunk

    def _read_ack(self, sent: str, deadline: Deadline) -> bool:
        """True for `+`, False for `-`; a packet arriving first is left buffered."""
        while True:
            for index, byte in enumerate(self._buffer):
                if byte in b"+-":
                    del self._buffer[index]
                    return byte == ord("+")
                if byte == ord("$"):
                    break
            self._fill(sent, deadline)

    def _read_packet(self, sent: str, deadline: Deadline) -> str:
        """Consume one complete packet from the buffer (reading more as needed); bytes stay on timeout."""
        while True:
            start = self._buffer.find(b"$")
            if start < 0:
                self._buffer.clear()
            else:
                del self._buffer[:start]
                end = self._buffer.find(b"#")
                if end >= 0 and len(self._buffer) >= end + 3:
                    body = bytes(self._buffer[1:end])
                    sent_sum = bytes(self._buffer[end + 1 : end + 3])
                    del self._buffer[: end + 3]
                    self.last_received = body.decode("latin-1")
                    good = sent_sum.lower() == f"{checksum(body):02x}".encode()
                    if self._ack_mode:
                        self._write(b"+" if good else b"-", sent)
                        if not good:
                            continue
                    elif not good:
                        raise GdbError("packet with a bad checksum", sent=sent, received=self.last_received)
                    return decode_payload(body)
            self._fill(sent, deadline)
