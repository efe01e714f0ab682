"""A kvm-host booted here under TCG with EL2: real arm64 KVM inside, driven over SSH with a pinned key.

One host boots for the module. Over SSH it must offer what a remote runner needs: /dev/kvm, the
kvm_hvc_arm64 tracepoint, both QEMUs and qemu-img, the guest image's files in the file cache by
sha256, TCP forwarding to its own ports; and it must run the lab's guest under KVM with the
patched QEMU. A second host, `lab host start` with the 6.12 kernel pinned, shows the host kernel
is a dimension and that a host stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import re
import select
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
from lab.machine.channels.ssh import parse_public_key
from tests.conftest import _qemu_children

pytestmark = pytest.mark.guest

HOST_612 = "linux-image-cloud-arm64=6.12.117-1"
L2_READY_SECONDS = 300.0
"""The guest's boot under KVM inside the emulated host: 30 to 40 s on an idle machine, far more when it is busy."""
L2_EXIT_SECONDS = 120.0
HOST_START_SECONDS = 900.0
"""`lab host start` to `ready:`, building the 6.12 host image first if it is not cached (a few minutes)."""
SYSTEM_OFF = "0x0000000084000008"


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
    leaked = [line for line in _qemu_children() if not line.startswith(f"{host.machine.pid} ")]
    assert not leaked, f"QEMU processes left running: {leaked}"


@pytest.fixture(scope="module")
def client(host) -> Iterator[paramiko.SSHClient]:
    """A paramiko client that accepts the host's own key and no other."""
    ssh = paramiko.SSHClient()
    key = parse_public_key(host.host_key)
    ssh.get_host_keys().add(f"[127.0.0.1]:{host.port}", key.get_name(), key)
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect("127.0.0.1", host.port, username=host.user, pkey=paramiko.PKey.from_path(host.client_key),
                allow_agent=False, look_for_keys=False, timeout=30, banner_timeout=30, auth_timeout=30)
    yield ssh
    ssh.close()


def run(client: paramiko.SSHClient, command: str, timeout: float = 60) -> str:
    """Run a shell command on the host; its output (stdout then stderr), failing the test on a non-zero exit."""
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    output = stdout.read().decode() + stderr.read().decode()
    status = stdout.channel.recv_exit_status()
    assert status == 0, f"`{command}` exited {status}: {output}"
    return output


def test_the_host_is_ready_with_kvm_in_vhe_mode_and_recorded_with_its_key(host, client):
    assert host.kvm.available and "VHE mode initialized successfully" in host.kvm.detail
    assert re.fullmatch(r"ssh://root@127\.0\.0\.1:\d+", host.url)
    assert host.kernel_release == host.image.kernel_release
    assert run(client, "stat -c '%F %t:%T' /dev/kvm").strip() == "character special file a:e8"
    console = (host.log_dir / f"console-{host.machine.name}.log").read_text(errors="replace")
    assert "lab-init: kvm /dev/kvm ready" in console and "lab-init: no swap (lab.swap=none)" in console
    known = known_host(host.url)
    assert known is not None and known.host_key == host.host_key and known.pid == os.getpid()
    assert known.client_key == str(host.client_key) and known.qemu_pid == host.machine.pid
    assert Path(known.log_dir) == host.log_dir


def test_tracefs_offers_the_kvm_hvc_tracepoint(client):
    fields = run(client, "cat /sys/kernel/tracing/events/kvm/kvm_hvc_arm64/format")
    assert "field:unsigned long r0;" in fields


def test_debian_qemu_the_patched_qemu_and_qemu_img_answer(host, client):
    assert "QEMU emulator version 11." in run(client, "qemu-system-aarch64 --version")
    (patched,) = host.image.manifest["qemu_builds"]
    assert "QEMU emulator version 10.2.2" in run(client, shlex.join([*patched["command"], "--version"]))
    assert run(client, "qemu-img --version").startswith("qemu-img version 11.")
    assert run(client, "qemu-io --version").startswith("qemu-io version 11.")


def test_the_guest_image_is_pre_seeded_in_the_file_cache_by_sha256(host, client):
    guest = host.image.manifest["guest_images"]["debian-arm64"]
    for name, entry in guest["files"].items():
        in_cache, in_image = entry["cache"], f"{guest['directory']}/{name}"
        assert run(client, f"sha256sum {in_cache}").split()[0] == entry["sha256"], name
        assert run(client, f"stat -c %s {in_image}").strip() == str(entry["size"]), name
        cached, named = run(client, f"stat -c %i {in_cache} {in_image}").split()
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


def _read_until(channel: paramiko.Channel, pattern: str, timeout: float, what: str, seen: bytearray) -> None:
    deadline = Deadline(timeout)
    while not re.search(pattern, seen.decode(errors="replace")):
        channel.settimeout(max(deadline.remaining, 0.01))
        try:
            data = channel.recv(65536)
        except TimeoutError:
            data = None
        if not data:
            tail = seen.decode(errors="replace").splitlines()[-5:]
            raise AssertionError(f"{'timed out' if data is None else 'output ended'} waiting for {what}: {tail}")
        seen += data


def test_the_lab_guest_boots_under_kvm_with_the_patched_qemu_and_powers_off(host, client):
    """The whole stack: the lab's guest, from the file cache, under the host's KVM, serial over SSH."""
    guest = host.image.manifest["guest_images"]["debian-arm64"]
    files = {name: entry["cache"] for name, entry in guest["files"].items()}
    (patched,) = host.image.manifest["qemu_builds"]
    run_dir = f"{host.image.manifest['layout']['runs']}/test-l2"
    swap = f"{run_dir}/swap.raw"
    tracing = "/sys/kernel/tracing"
    run(client, f"mkdir -p {run_dir} && qemu-img convert -O raw -S 4k {files['swap.raw']} {swap}")
    run(client, f"echo 8192 > {tracing}/buffer_size_kb && echo > {tracing}/trace && "
                f"echo 1 > {tracing}/events/kvm/kvm_hvc_arm64/enable")
    qemu = [*patched["command"], "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "virt,gic-version=3", "-cpu", "host", "-accel", "kvm", "-smp", "1", "-m", "512",
            "-kernel", files["vmlinuz"], "-initrd", files["initramfs.cpio"],
            "-append", f"{guest['kernel_append']} lab.swap=vda",
            "-blockdev", f"driver=file,filename={swap},node-name=file0",
            "-blockdev", "driver=raw,file=file0,node-name=disk0", "-device", "virtio-blk-pci,drive=disk0,romfile=",
            "-serial", "mon:stdio"]
    session = client.get_transport().open_session(timeout=30)
    seen = bytearray()
    pid = None
    try:
        session.set_combine_stderr(True)
        session.exec_command(f"echo qemu-pid $$; exec {shlex.join(qemu)}")
        _read_until(session, r"qemu-pid \d+\n", 30, "the L2 QEMU's pid", seen)
        pid = int(re.search(r"qemu-pid (\d+)", seen.decode()).group(1))
        started = time.monotonic()
        _read_until(session, r"lab-init: ready", L2_READY_SECONDS, "the L2 guest's `lab-init: ready`", seen)
        print(f"L2 guest ready {time.monotonic() - started:.1f}s after its QEMU started")
        session.sendall(b"poweroff -f\n")
        _read_until(session, r"reboot: Power down", L2_EXIT_SECONDS, "the L2 guest to power off", seen)
        assert session.status_event.wait(L2_EXIT_SECONDS), "the L2 QEMU did not exit after the guest powered off"
        assert session.recv_exit_status() == 0
        pid = None
    finally:
        session.close()
        if pid is not None:
            client.exec_command(f"kill -9 {pid}", timeout=30)
        trace = run(client, f"echo 0 > {tracing}/events/kvm/kvm_hvc_arm64/enable && cat {tracing}/trace && "
                            f"echo > {tracing}/trace && rm -rf {run_dir}")
    console = seen.decode(errors="replace")
    assert "psci: PSCIv1.3 detected in firmware" in console, "a 7.2 host's KVM offers PSCI 1.3"
    assert "lab-init: swap made on /dev/vda" in console
    assert f"r0: {SYSTEM_OFF}" in trace, "poweroff -f is SYSTEM_OFF, seen by the host's KVM"
    deadline = Deadline(30)
    while "qemu-system" in run(client, "ps -o comm"):
        assert not deadline.expired, "a QEMU is still running on the host"
        time.sleep(0.5)


def _read_line(process: subprocess.Popen[str], pattern: str, timeout: float, what: str) -> re.Match[str]:
    """The first line of the process's output that matches, read within `timeout`."""
    deadline = Deadline(timeout)
    seen: list[str] = []
    assert process.stdout is not None
    while not deadline.expired:
        ready, _, _ = select.select([process.stdout], [], [], deadline.remaining)
        line = process.stdout.readline() if ready else ""
        if ready and not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no {what} within {timeout:.0f}s; last output: {seen[-5:]}")


def test_lab_host_start_boots_a_pinned_612_host_and_stops_it_on_sigterm():
    """The host kernel as a dimension, from the command line, and a clean stop: no QEMU, no hosts-file entry."""
    command = [sys.executable, "-m", "lab.cli", "host", "start", "--kernel-deb", HOST_612]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        ready = _read_line(process, r"^ready: (ssh://root@127\.0\.0\.1:\d+) \(kernel (\S+), kvm: (\S+)\)",
                           HOST_START_SECONDS, "`ready:` line from lab host start")
        url, release, kvm = ready.groups()
        assert release.startswith("6.12.117") and kvm == "yes"
        listed = subprocess.run([sys.executable, "-m", "lab.cli", "host", "list"], capture_output=True, text=True,
                                timeout=60)
        assert url in listed.stdout and "kernel 6.12.117" in listed.stdout
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
