"""The SSH channel: against nothing listening, fake peers in threads, and the default image's real dropbear.

Every fake peer runs on a thread with timed-out sockets, is stopped at the end of its test and its thread
joined; every wait in these tests is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab.deadline import wait_until
from lab.errors import ChannelError, WaitTimeout
from lab.machine.channels.ssh import SshChannel, parse_public_key
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec, free_local_port, unix_channels
from lab.rundir import RunDirectory
from tests.support.timing import LOADED_HOST_SLACK


def _openssh_line(key: Ed25519PrivateKey) -> str:
    encoding, public_format = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    return key.public_key().public_bytes(encoding, public_format).decode()


def _stranger_keys(tmp_path: Path) -> tuple[str, Path]:
    """A host key line and a client key file that no image knows."""
    client = Ed25519PrivateKey.generate()
    path = tmp_path / "stranger"
    path.write_bytes(client.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    return _openssh_line(Ed25519PrivateKey.generate()), path


POLL_SECONDS = 0.05
JOIN_SECONDS = 5.0
SLACK = LOADED_HOST_SLACK


def _private_key_file(path: Path, key: Ed25519PrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    return path


class FakePeer:
    """A TCP listener on 127.0.0.1 that hands each connection to `serve` on its own thread until stopped."""

    def __init__(self, serve: Callable[[FakePeer, socket.socket], None]) -> None:
        self.serve = serve
        self.stop = threading.Event()
        self.connections: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(POLL_SECONDS)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, name="fake-ssh", daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(connection)
            thread = threading.Thread(target=self.serve, args=(self, connection), name="fake-ssh-peer", daemon=True)
            self.threads.append(thread)
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in list(self.threads):
            thread.join(JOIN_SECONDS)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def peer() -> Iterator[Callable[[Callable[[FakePeer, socket.socket], None]], FakePeer]]:
    peers: list[FakePeer] = []

    def start(serve: Callable[[FakePeer, socket.socket], None]) -> FakePeer:
        peers.append(FakePeer(serve))
        return peers[-1]

    yield start
    for fake in peers:
        fake.close()


def _silent(fake: FakePeer, connection: socket.socket) -> None:
    """Accepts and never sends a banner, as a guest whose SSH server hangs before it greets."""
    fake.stop.wait()


class ExecNeverFinishes(paramiko.ServerInterface):
    """Lets in one client key, opens sessions, and accepts any command without ever finishing it."""

    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key
        self.commands: list[str] = []
        self.sessions: list[paramiko.Channel] = []

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if key == self.client_key else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.commands.append(command.decode())
        self.sessions.append(channel)
        channel.sendall(b"started\n")
        return True


def _ssh_server(host_key: paramiko.PKey, interface: paramiko.ServerInterface) -> Callable[[FakePeer, socket.socket],
                                                                                          None]:
    def serve(fake: FakePeer, connection: socket.socket) -> None:
        opened: list[paramiko.Channel] = []
        with paramiko.Transport(connection) as transport:
            transport.add_server_key(host_key)
            transport.start_server(server=interface)
            while not fake.stop.is_set() and transport.is_active():
                # The transport holds its channels weakly: an accepted one must be kept, or it closes.
                if (channel := transport.accept(POLL_SECONDS)) is not None:
                    opened.append(channel)

    return serve


@pytest.fixture
def keys(tmp_path: Path) -> tuple[paramiko.PKey, str, Path]:
    """A host key for the fake server, its OpenSSH public line, and a client key file."""
    host = Ed25519PrivateKey.generate()
    host_file = _private_key_file(tmp_path / "host", host)
    client_file = _private_key_file(tmp_path / "client", Ed25519PrivateKey.generate())
    return paramiko.Ed25519Key(filename=str(host_file)), _openssh_line(host), client_file


def test_a_peer_that_never_sends_a_banner_times_out(peer, keys) -> None:
    _, host_line, client_file = keys
    fake = peer(_silent)
    channel = SshChannel.from_files(fake.port, "root", host_line, client_file)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        channel.connect(1.0)
    assert time.monotonic() - started < 1.0 + SLACK
    assert f"SSH server on 127.0.0.1:{fake.port}" in str(caught.value)
    assert "connected, but no SSH banner" in str(caught.value)
    assert fake.connections, "the channel did reach the silent peer"
    assert not channel.connected


def test_a_command_that_never_finishes_times_out_naming_it(peer, keys) -> None:
    host_key, host_line, client_file = keys
    server = ExecNeverFinishes(paramiko.PKey.from_path(client_file))
    fake = peer(_ssh_server(host_key, server))
    channel = SshChannel.from_files(fake.port, "lab", host_line, client_file)
    channel.connect(5)
    try:
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as caught:
            channel.run("sleep infinity", timeout=1.0)
        assert time.monotonic() - started < 1.0 + SLACK
        assert "`sleep infinity` to finish over SSH" in str(caught.value)
        assert "last seen: started" in str(caught.value)
        assert server.commands == ["sleep infinity"]
        assert channel.connected, "a command's timeout leaves the connection usable"
        wait_until(lambda: True if server.sessions[0].closed else None, SLACK, "the timed-out session to close")
    finally:
        channel.close()
    assert not channel.connected


def _listeners(port: int) -> list[str]:
    """Local addresses of the host's listening TCP sockets on `port`, as /proc/net/tcp{,6} spell them."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def test_public_key_line_parses_to_the_same_key():
    key = Ed25519PrivateKey.generate()
    parsed = parse_public_key(f"{_openssh_line(key)} comment")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert parsed.get_name() == "ssh-ed25519"
    assert parsed.asbytes().endswith(raw)


def test_connect_to_a_port_nobody_listens_on_times_out(tmp_path):
    host_key, client_key = _stranger_keys(tmp_path)
    channel = SshChannel.from_files(free_local_port(), "root", host_key, client_key)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        channel.connect(1.0)
    assert time.monotonic() - started < 1.0 + SLACK
    assert f"SSH server on 127.0.0.1:{channel.port}" in str(caught.value)
    assert "Unable to connect" in str(caught.value)


def test_unreadable_client_key_is_a_channel_error(tmp_path):
    host_key, _ = _stranger_keys(tmp_path)
    with pytest.raises(ChannelError, match="cannot load the image's SSH keys"):
        SshChannel.from_files(22, "root", host_key, tmp_path / "missing")


def test_ssh_port_forwards_loopback_only_over_a_user_network(tmp_path):
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"\0" * 64)
    argv = MachineSpec(arch="aarch64", kernel=kernel, initrd=None, append="", ssh_port=40022).command(
        unix_channels(tmp_path), str(tmp_path / "console.log"))
    assert argv[argv.index("-netdev") + 1] == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
    assert argv[argv.index("-device", argv.index("-netdev")) + 1] == "virtio-net-pci,netdev=net0,romfile="
    without = MachineSpec(arch="aarch64", kernel=kernel, initrd=None, append="").command(
        unix_channels(tmp_path), str(tmp_path / "c"))
    assert "-netdev" not in without


def test_free_local_port_is_one_nobody_listens_on_and_can_be_bound_on_loopback():
    port = free_local_port()
    assert 1024 <= port <= 65535
    assert not _listeners(port)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
        probe.listen()
        assert _listeners(port) == ["0100007F"], "bound where QEMU's forward will be: 127.0.0.1 only"


@pytest.mark.guest
def test_commands_over_ssh_to_the_default_image_with_its_host_key_pinned(tmp_path, default_image):
    login = default_image.ssh
    assert login is not None, "the default image has an SSH server"
    disk = tmp_path / "swap.raw"
    disk.write_bytes(b"\0" * (64 << 20))
    port = free_local_port()
    spec = MachineSpec(arch="aarch64", kernel=default_image.kernel, initrd=default_image.initramfs,
                       append=f"{default_image.kernel_append} lab.swap=vda", disks=(Disk(disk),), ssh_port=port)
    stranger_host_key, stranger_client_key = _stranger_keys(tmp_path)
    with Machine(spec, RunDirectory(tmp_path).boot("boot1"), time.monotonic()) as machine:
        machine.launch()
        machine.resume()
        ready = machine.console.expect(r"lab-init: ready boot_id=(\S+)", 120, "the guest to become ready")
        assert _listeners(port) == ["0100007F"], "QEMU forwards on 127.0.0.1 only"

        impostor = SshChannel.from_files(port, login.user, stranger_host_key, login.client_key)
        with pytest.raises(ChannelError, match="host key other than the image's"):
            impostor.connect(60)
        intruder = SshChannel.from_files(port, login.user, login.host_key, stranger_client_key)
        with pytest.raises(ChannelError, match="refused the image's client key"):
            intruder.connect(60)

        channel = SshChannel.from_files(port, login.user, login.host_key, login.client_key)
        channel.connect(60)
        try:
            result = channel.run("id -u; echo to-stderr >&2; exit 7", timeout=30)
            assert (result.status, result.output.split()) == (7, ["0", "to-stderr"])
            with pytest.raises(WaitTimeout):
                channel.run("sleep 30", timeout=1)
            boot_id = channel.run("cat /proc/sys/kernel/random/boot_id", timeout=30).output.strip()
            assert boot_id == ready.group(1), "SSH reached this very guest"
        finally:
            channel.close()
    assert not channel.connected
