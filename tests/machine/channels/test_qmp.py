"""QmpChannel against a fake QMP server on a unix socket: one that goes quiet, hangs up, or never greets.

The server runs on a thread with blocking sockets that all time out, is stopped at the end of each
test and its thread joined; every wait in these tests is bounded.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.deadline import wait_until
from lab.errors import ChannelError, WaitTimeout
from lab.machine.channels import qmp as qmp_module
from lab.machine.channels.qmp import ATTEMPT_SECONDS, QmpChannel
from tests.support.timing import LOADED_HOST_SLACK

GREETING = {"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": "fake"},
                    "capabilities": []}}
POLL_SECONDS = 0.05
JOIN_SECONDS = 5.0
SLACK = LOADED_HOST_SLACK


def _event(name: str, seconds: int) -> dict:
    return {"event": name, "data": {"n": seconds}, "timestamp": {"seconds": seconds, "microseconds": 0}}


class FakeQmp:
    """Accepts connections on `path` and hands each to `serve` on the server thread until stopped."""

    def __init__(self, path: Path, serve: Callable[[FakeQmp, socket.socket], None]) -> None:
        self.serve = serve
        self.stop = threading.Event()
        self.hung_up = threading.Event()
        self.received: list[dict] = []
        self.connections: list[socket.socket] = []
        self.unparsed: dict[socket.socket, str] = {}
        self.decoder = json.JSONDecoder()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.listener.settimeout(POLL_SECONDS)
        self.thread = threading.Thread(target=self._accept, name="fake-qmp", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(POLL_SECONDS)
            self.connections.append(connection)
            self.serve(self, connection)

    def send(self, connection: socket.socket, message: dict) -> None:
        connection.sendall(json.dumps(message).encode() + b"\r\n")

    def receive(self, connection: socket.socket) -> dict | None:
        """The next command from the client (sent as bare JSON, no newline); None when stopped or it left."""
        buffer = self.unparsed.pop(connection, "")
        while not self.stop.is_set():
            try:
                message, end = self.decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                try:
                    chunk = connection.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return None
                buffer += chunk.decode()
                continue
            self.unparsed[connection] = buffer.lstrip()[end:]
            self.received.append(message)
            return message
        return None

    def handshake(self, connection: socket.socket) -> None:
        self.send(connection, GREETING)
        command = self.receive(connection)
        assert command is not None and command["execute"] == "qmp_capabilities"
        self.send(connection, {"return": {}, "id": command.get("id")})

    def close(self) -> None:
        self.stop.set()
        self.thread.join(JOIN_SECONDS)
        assert not self.thread.is_alive(), "the fake QMP server's thread did not stop"
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Callable[[FakeQmp, socket.socket], None]], FakeQmp]]:
    servers: list[FakeQmp] = []

    def start(handler: Callable[[FakeQmp, socket.socket], None]) -> FakeQmp:
        servers.append(FakeQmp(tmp_path / "qmp.sock", handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[QmpChannel]:
    qmp = QmpChannel(tmp_path / "qmp.sock", tmp_path / "qmp.jsonl", time.monotonic())
    yield qmp
    started = time.monotonic()
    qmp.close()
    assert time.monotonic() - started < SLACK, "close() took too long"
    assert not qmp._thread.is_alive(), "the channel's event loop thread is still running"


def _never_answers(server: FakeQmp, connection: socket.socket) -> None:
    server.handshake(connection)
    while server.receive(connection) is not None:
        pass


def _events_then_hang_up(pause: float) -> Callable[[FakeQmp, socket.socket], None]:
    """After the handshake (and `pause`): two events, half a third, then the peer is gone like an exited QEMU."""

    def serve(server: FakeQmp, connection: socket.socket) -> None:
        server.handshake(connection)
        server.stop.wait(pause)
        server.send(connection, _event("STOP", 1))
        server.send(connection, _event("SUSPEND_DISK", 2))
        connection.sendall(json.dumps(_event("SHUTDOWN", 3)).encode()[:20])
        connection.shutdown(socket.SHUT_RDWR)
        server.listener.close()
        server.hung_up.set()

    return serve


def _never_greets(server: FakeQmp, connection: socket.socket) -> None:
    """Holds every connection open and says nothing."""


def test_execute_without_an_answer_is_a_channel_error_within_its_timeout(serve, channel: QmpChannel) -> None:
    server = serve(_never_answers)
    channel.connect(5)
    started = time.monotonic()
    with pytest.raises(ChannelError, match=r"QMP query-status got no answer within 0\.5s"):
        channel.execute("query-status", timeout=0.5)
    assert 0.45 < time.monotonic() - started < 0.5 + SLACK
    assert [message["execute"] for message in server.received] == ["qmp_capabilities", "query-status"]


@pytest.mark.parametrize("pause", [0.0, 0.3], ids=["during-connect", "after-connect"])
def test_events_before_a_hang_up_are_kept_and_nothing_hangs(serve, channel: QmpChannel, tmp_path: Path,
                                                            pause: float) -> None:
    server = serve(_events_then_hang_up(pause))
    channel.connect(5)
    assert server.hung_up.wait(5)
    wait_until(lambda: True if len(channel.events) == 2 else None, 5, "the two whole events")
    assert [(e["event"], e["data"]) for e in channel.events] == [("STOP", {"n": 1}), ("SUSPEND_DISK", {"n": 2})]
    assert channel.wait_event("SUSPEND_DISK", 1)["timestamp"]["seconds"] == 2
    started = time.monotonic()
    with pytest.raises(ChannelError):
        channel.execute("query-status", timeout=SLACK * 6)
    assert time.monotonic() - started < SLACK, "a command to a peer that hung up must fail at once"
    started = time.monotonic()
    channel.close()
    assert time.monotonic() - started < SLACK
    logged = [json.loads(line) for line in (tmp_path / "qmp.jsonl").read_text().splitlines()]
    assert logged == channel.events
    assert all(record["lab_seconds"] >= 0 for record in logged)


def test_a_server_that_never_greets_times_out_naming_the_greeting(serve, channel: QmpChannel) -> None:
    serve(_never_greets)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        channel.connect(1.0)
    assert time.monotonic() - started < 1.0 + SLACK
    assert f"QMP on {channel.socket_path}" in str(caught.value)
    assert "no QMP greeting" in str(caught.value)


def test_a_greeting_slower_than_one_attempt_is_still_awaited(serve, channel: QmpChannel) -> None:
    """Like a QEMU on a loaded host: listening at once, greeting only once its main loop runs."""
    ready_at = time.monotonic() + ATTEMPT_SECONDS + 0.3

    def greet_when_ready(server: FakeQmp, connection: socket.socket) -> None:
        if time.monotonic() >= ready_at:
            server.handshake(connection)

    serve(greet_when_ready)
    channel.connect(ATTEMPT_SECONDS + 5)
    assert channel.connected


def test_attempts_cut_short_in_cleanup_do_not_wedge_later_ones(serve, channel: QmpChannel,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows so short that qemu.qmp's own cleanup is cancelled (left DISCONNECTING), then QEMU listens."""
    monkeypatch.setattr(qmp_module, "ATTEMPT_SECONDS", 0.0003)
    monkeypatch.setattr(qmp_module, "MIN_ATTEMPT_SECONDS", 0.0003)

    def listen_later() -> None:
        time.sleep(0.5)
        monkeypatch.setattr(qmp_module, "ATTEMPT_SECONDS", ATTEMPT_SECONDS)
        serve(lambda server, connection: server.handshake(connection))

    later = threading.Thread(target=listen_later, daemon=True)
    later.start()
    try:
        channel.connect(3 + SLACK)
    finally:
        later.join(JOIN_SECONDS)
    assert channel.connected


def test_nothing_listening_times_out_naming_the_socket(channel: QmpChannel) -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        channel.connect(0.5)
    assert time.monotonic() - started < 0.5 + SLACK
    assert f"QMP on {channel.socket_path}" in str(caught.value)
    assert "No such file or directory" in str(caught.value)
