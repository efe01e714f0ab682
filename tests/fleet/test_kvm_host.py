"""A kvm-host booted here under TCG with EL2: real arm64 KVM inside, driven over SSH with a pinned key.

One host boots for the module. Over SSH it must offer what a remote runner needs: /dev/kvm, the
kvm_hvc_arm64 tracepoint, both QEMUs and qemu-img, the guest image's files in the file cache by
sha256, TCP forwarding to its own ports (the lab's scenarios on it: tests/hosts/test_kvm_runs.py).
A second host, `lab host start` with the 6.12 kernel pinned, shows the host kernel is a dimension and
that a host stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from lab.deadline import Deadline
from lab.fleet.host_vm import RunningHost, build_host_image, start_host
from lab.hosts.known import known_host
from lab.image.guest_image import GuestImage
from tests.support.kernels import kernel_pin, newest_served
from tests.support.kvm_host import host_client, no_qemu_besides, read_line, run_on_host

pytestmark = pytest.mark.guest

HOST_START_SECONDS = 900.0
"""`lab host start` to `ready:`, building the 6.12 host image first if it is not cached (a few minutes)."""


def _log(line: str) -> None:
    print(f"lab host: {line}")


@pytest.fixture(scope="module")
def host_image() -> GuestImage:
    """The kvm-host image, built now if its inputs changed (the first build also builds the arm64 QEMU)."""
    image, _ = build_host_image(log=_log)
    return image


@pytest.fixture(scope="module")
def host(host_image) -> Iterator[RunningHost]:
    with start_host(image=host_image, log=_log) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_orphan_qemu(host):
    """The module's host QEMU lives across tests; any other QEMU a test leaves behind is a leak."""
    yield
    no_qemu_besides(host)


@pytest.fixture(scope="module")
def client(host) -> Iterator[paramiko.SSHClient]:
    with host_client(host) as ssh:
        yield ssh


def test_the_host_is_ready_with_kvm_in_vhe_mode_and_recorded_with_its_key(host, client):
    assert host.kvm.available and "VHE mode initialized successfully" in host.kvm.detail
    assert re.fullmatch(r"ssh://root@127\.0\.0\.1:\d+", host.url)
    assert host.kernel_release == host.image.kernel_release
    assert run_on_host(client, "stat -c '%F %t:%T' /dev/kvm").strip() == "character special file a:e8"
    console = (host.log_dir / f"console-{host.machine.name}.log").read_text(errors="replace")
    assert "lab-init: kvm /dev/kvm ready" in console and "lab-init: no swap (lab.swap=none)" in console
    known = known_host(host.url)
    assert known is not None and known.host_key == host.host_key and known.pid == os.getpid()
    assert known.client_key == str(host.client_key) and known.qemu_pid == host.machine.pid
    assert Path(known.log_dir) == host.log_dir


def test_tracefs_offers_the_kvm_hvc_tracepoint(client):
    fields = run_on_host(client, "cat /sys/kernel/tracing/events/kvm/kvm_hvc_arm64/format")
    assert "field:unsigned long r0;" in fields


def _upstream(debian_version: str) -> str:
    """`1:11.0.2+ds-1` -> `11.0.2`: what QEMU's --version says of a Debian package version."""
    match = re.match(r"(?:\d+:)?(\d+\.\d+\.\d+)", debian_version)
    assert match, debian_version
    return match.group(1)


def test_debian_qemu_the_patched_qemu_and_qemu_img_answer(host, client):
    """The versions the image recorded, not a number of the day: sid's QEMU moves on."""
    versions = {i["package"]: i["version"] for i in host.image.manifest["inputs"] if "package" in i}
    debian = _upstream(versions["qemu-system-arm"])
    tools = _upstream(versions["qemu-utils"])
    assert f"QEMU emulator version {debian}" in run_on_host(client, "qemu-system-aarch64 --version")
    (patched,) = host.image.manifest["qemu_builds"]
    built_from = patched["source"].split()[-1]
    assert f"QEMU emulator version {_upstream(built_from)}" in run_on_host(
        client, shlex.join([*patched["command"], "--version"]))
    assert run_on_host(client, "qemu-img --version").startswith(f"qemu-img version {tools}")
    assert run_on_host(client, "qemu-io --version").startswith(f"qemu-io version {tools}")


def test_the_guest_image_is_pre_seeded_in_the_file_cache_by_sha256(host, client):
    guest = host.image.manifest["guest_images"]["debian-arm64"]
    for name, entry in guest["files"].items():
        in_cache, in_image = entry["cache"], f"{guest['directory']}/{name}"
        assert run_on_host(client, f"sha256sum {in_cache}").split()[0] == entry["sha256"], name
        assert run_on_host(client, f"stat -c %s {in_image}").strip() == str(entry["size"]), name
        cached, named = run_on_host(client, f"stat -c %i {in_cache} {in_image}").split()
        assert cached == named, f"{name}: not a hard link of its cache entry"


def _open_tunnel(client: paramiko.SSHClient, port: int, timeout: float) -> paramiko.Channel:
    """A direct-tcpip channel to 127.0.0.1:port on the host, retried until something listens there."""
    deadline = Deadline(timeout)
    transport = client.get_transport()
    assert transport is not None
    while True:
        try:
            return transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10)
        except paramiko.ChannelException:
            if deadline.expired:
                raise TimeoutError(f"nothing listened on the host's port {port} within {timeout:.0f}s") from None
            time.sleep(0.2)


def test_a_direct_tcpip_channel_carries_bytes_to_a_port_on_the_host(client):
    _, listener_out, _ = client.exec_command("echo from-host | nc -l -p 5555", timeout=60)
    tunnel = _open_tunnel(client, 5555, 30)
    try:
        tunnel.settimeout(30)
        assert tunnel.recv(100) == b"from-host\n"
        tunnel.sendall(b"from-lab\n")
    finally:
        tunnel.close()
    assert listener_out.read().decode() == "from-lab\n"


def test_lab_host_start_boots_a_pinned_612_host_and_stops_it_on_sigterm():
    """The host kernel as a dimension, from the command line, and a clean stop: no QEMU, no hosts-file entry."""
    command = [sys.executable, "-m", "lab.cli", "host", "start", "--kernel-deb", kernel_pin("6.12")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        ready = read_line(process, r"^ready: (ssh://root@127\.0\.0\.1:\d+) \(kernel (\S+), kvm: (\S+)\)",
                           HOST_START_SECONDS, "`ready:` line from lab host start")
        url, release, kvm = ready.groups()
        upstream = newest_served("6.12").split("-")[0]
        assert release.startswith(upstream) and kvm == "yes"
        listed = subprocess.run([sys.executable, "-m", "lab.cli", "host", "list"], capture_output=True, text=True,
                                timeout=60)
        assert url in listed.stdout and f"kernel {upstream}" in listed.stdout
        known = known_host(url)
        assert known is not None and known.pid == process.pid and known.qemu_pid is not None
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert process.returncode == 0, output
    assert f"stopping {url}" in output
    assert known_host(url) is None, "a stopped host leaves no entry in the hosts file"
    assert not Path(f"/proc/{known.qemu_pid}").exists(), "the host's QEMU outlived lab host start"
