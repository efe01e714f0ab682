"""The GDB remote client against a scripted peer on the other end of a real socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.errors import WaitTimeout
from lab.machine.channels.gdbstub import (
    AARCH64_CPSR,
    AARCH64_PC,
    GdbError,
    GdbPeerClosed,
    GdbRemote,
    StopKind,
    checksum,
    decode_payload,
    frame,
    parse_stop_reply,
)
from tests.support.fake_gdbstub import FakeStub, Handler, connected, raw_packet
from tests.support.timing import LOADED_HOST_SLACK


def eventually(check: Callable[[], bool], timeout: float = 1.0) -> bool:
    """The stub records acks on its own thread, so give it a moment to see the client's last one."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def answer(table: dict[str, str]) -> Handler:
    def handler(payload: str) -> list[bytes] | None:
        if payload not in table:
            return [frame("")]
        return [frame(table[payload])]

    return handler


def test_frame_computes_the_checksum_and_escapes_special_characters() -> None:
    assert frame("g") == b"$g#67"
    assert frame("OK") == b"$OK#9a"
    escaped = frame("a#b")
    assert escaped.startswith(b"$a}\x03b#")
    assert escaped.endswith(f"{checksum(b'a}' + bytes([0x03]) + b'b'):02x}".encode())


def test_decode_undoes_run_length_and_escapes() -> None:
    assert decode_payload(b"0* ") == "0000"
    assert decode_payload(b"ab*!c") == "abbbbbc"
    assert decode_payload(b"x}\x03y") == "x#y"


def test_handshake_leaves_ack_mode_when_the_stub_offers_it() -> None:
    remote, stub = connected(
        answer(
            {
                "qSupported:swbreak+;vContSupported+": "PacketSize=1000;QStartNoAckMode+;vContSupported+",
                "QStartNoAckMode": "OK",
                "vCont?": "vCont;c;C;s;S",
                "p20": "b43c04800080ffff",
            }
        )
    )
    remote.handshake()
    assert remote.features == {"PacketSize": "1000", "QStartNoAckMode": True, "vContSupported": True}
    assert not remote.ack_mode
    acks_after_handshake = len(stub.acks)
    assert remote.read_register(AARCH64_PC) == 0xFFFF800080043CB4
    assert len(stub.acks) == acks_after_handshake


def test_handshake_stays_in_ack_mode_without_the_offer() -> None:
    remote, stub = connected(
        answer({"qSupported:swbreak+;vContSupported+": "PacketSize=1000;multiprocess+", "vCont?": ""})
    )
    remote.handshake()
    assert remote.ack_mode
    assert "QStartNoAckMode" not in stub.received
    assert eventually(lambda: stub.acks == ["+", "+"])


def test_a_rejected_packet_is_sent_again() -> None:
    remote, stub = connected(answer({"P0=0100000000000000": "OK"}))
    stub.nak_next = True
    remote.write_register(0, 1)
    assert stub.received == ["P0=0100000000000000", "P0=0100000000000000"]


def test_a_reply_with_a_bad_checksum_is_refused_and_resent() -> None:
    good = raw_packet(b"0100000000000000")
    bad = good[:-2] + b"00"
    remote, stub = connected(lambda payload: [bad], nak_reply=good)
    assert remote.read_register(0) == 1
    assert eventually(lambda: stub.acks == ["-", "+"])


def test_read_registers_decodes_a_run_length_encoded_block() -> None:
    pc = (0xFFFF800080043CB4).to_bytes(8, "little").hex().encode()
    registers = b"0200008400000000" + b"0" * 16 * 31 + pc + b"c5234081"
    compressed = registers.replace(b"0" * 64, b"0*" + bytes([29 + 63]))
    remote, _ = connected(lambda payload: [raw_packet(compressed)])
    values = remote.read_registers()
    assert values[0] == 0x84000002
    assert values[1:31] == [0] * 30
    assert values[AARCH64_PC] == 0xFFFF800080043CB4
    assert values[AARCH64_CPSR] == 0x814023C5


def test_register_writes_use_the_register_width() -> None:
    remote, stub = connected(answer({"P21=05000000": "OK", "P20=b83c04800080ffff": "OK"}))
    remote.write_register(AARCH64_CPSR, 5)
    remote.write_register(AARCH64_PC, 0xFFFF800080043CB8)
    assert stub.received == ["P21=05000000", "P20=b83c04800080ffff"]


def test_an_error_reply_carries_the_packets() -> None:
    remote, _ = connected(answer({"Z0,ffff800080043cb4,4": "E22"}))
    with pytest.raises(GdbError) as caught:
        remote.insert_breakpoint(0xFFFF800080043CB4)
    assert caught.value.sent == "Z0,ffff800080043cb4,4"
    assert caught.value.received == "E22"


@pytest.mark.parametrize(
    ("payload", "kind", "code", "thread", "vcpu"),
    [
        ("T05thread:p01.02;swbreak:;", StopKind.SIGNAL, 5, "p01.02", 1),
        ("T05thread:01;", StopKind.SIGNAL, 5, "01", 0),
        ("T02thread:0a;", StopKind.SIGNAL, 2, "0a", 9),
        ("S05", StopKind.SIGNAL, 5, None, None),
        ("W00", StopKind.EXITED, 0, None, None),
        ("W01;process:1", StopKind.EXITED, 1, None, None),
        ("X09", StopKind.TERMINATED, 9, None, None),
    ],
)
def test_stop_replies(payload: str, kind: StopKind, code: int, thread: str | None, vcpu: int | None) -> None:
    stop = parse_stop_reply(payload)
    assert (stop.kind, stop.code, stop.thread, stop.vcpu_index) == (kind, code, thread, vcpu)


def test_not_a_stop_reply() -> None:
    with pytest.raises(GdbError):
        parse_stop_reply("OK")


def test_step_names_the_thread_and_waits_for_its_stop() -> None:
    def handler(payload: str) -> list[bytes] | None:
        if payload == "vCont?":
            return [frame("vCont;c;C;s;S")]
        if payload.startswith("qSupported"):
            return [frame("PacketSize=1000")]
        if payload == "vCont;s:p01.02":
            return [frame("O6869"), frame("T05thread:p01.02;")]
        return [frame("")]

    remote, stub = connected(handler)
    remote.handshake()
    stop = remote.step("p01.02")
    assert stop.thread == "p01.02"
    assert stub.received[-1] == "vCont;s:p01.02"


def test_without_vcont_continue_and_step_use_the_plain_packets() -> None:
    def handler(payload: str) -> list[bytes] | None:
        if payload == "s":
            return [frame("T05thread:02;")]
        if payload == "Hc02":
            return [frame("OK")]
        if payload.startswith("qSupported"):
            return [frame("PacketSize=1000")]
        return [frame("")] if payload == "vCont?" else None

    remote, stub = connected(handler)
    remote.handshake()
    assert remote.step("02").vcpu_index == 1
    remote.resume()
    time.sleep(0.1)
    assert stub.received[-3:] == ["Hc02", "s", "c"]


def test_wait_stop_reports_which_vcpu_stopped_after_a_continue() -> None:
    def handler(payload: str) -> list[bytes] | None:
        return [frame("T05thread:02;")] if payload == "vCont;c" else [frame("vCont;c;s")]

    remote, _ = connected(handler)
    remote.request("vCont?")
    remote._has_vcont = True
    remote.resume()
    assert remote.wait_stop(1.0).vcpu_index == 1


def test_a_peer_that_never_answers_times_out_with_the_packet() -> None:
    remote, _ = connected(lambda payload: None, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        remote.read_register(0)
    assert 0.25 < time.monotonic() - started < 0.3 + LOADED_HOST_SLACK
    assert "'p0'" in str(caught.value)


def test_a_half_received_packet_survives_a_timeout() -> None:
    whole = frame("T05thread:01;")

    def handler(payload: str) -> list[bytes] | None:
        return [whole[:5]]

    remote, stub = connected(handler, timeout=0.2)
    remote.send("vCont;c")
    with pytest.raises(WaitTimeout):
        remote.wait_stop(0.2)
    stub.sock.sendall(whole[5:])
    assert remote.wait_stop(1.0).thread == "01"


def test_a_peer_that_goes_away_is_reported_as_closed() -> None:
    def hang_up(payload: str) -> list[bytes] | None:
        stub.sock.shutdown(socket.SHUT_RDWR)
        return None

    remote, stub = connected(hang_up)
    remote.send("vCont;c")
    with pytest.raises(GdbPeerClosed) as caught:
        remote.wait_stop(2.0)
    assert caught.value.sent == "stop reply"


def test_connect_waits_for_the_socket_to_appear(tmp_path: Path) -> None:
    path = tmp_path / "gdb.sock"
    table = answer({"qSupported:swbreak+;vContSupported+": "PacketSize=1000", "vCont?": "vCont;c;s"})
    stubs: list[FakeStub] = []

    def serve_later() -> None:
        time.sleep(0.3)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)
        connection, _ = server.accept()
        stubs.append(FakeStub(connection, table))
        server.close()

    threading.Thread(target=serve_later, daemon=True).start()
    with GdbRemote.connect(str(path), timeout=3.0) as remote:
        assert remote.features == {"PacketSize": "1000"}


def test_connect_gives_up_after_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(WaitTimeout):
        GdbRemote.connect(str(tmp_path / "missing.sock"), timeout=0.2)
