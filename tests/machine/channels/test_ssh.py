"""The SSH channel: against nothing listening, and against the default image's real dropbear under QEMU."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab.errors import ChannelError, WaitTimeout
from lab.machine.channels.ssh import SshChannel, parse_public_key
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec, free_local_port
from lab.rundir import RunDirectory


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
    assert time.monotonic() - started < 5
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
        tmp_path, tmp_path / "console.log")
    assert argv[argv.index("-netdev") + 1] == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
    assert argv[argv.index("-device", argv.index("-netdev")) + 1] == "virtio-net-pci,netdev=net0,romfile="
    without = MachineSpec(arch="aarch64", kernel=kernel, initrd=None, append="").command(tmp_path, tmp_path / "c")
    assert "-netdev" not in without


def test_free_local_port_can_be_bound_on_loopback():
    port = free_local_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


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
