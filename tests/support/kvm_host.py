"""What tests of an emulated KVM host share: an SSH client pinned to its key, commands on it, leaked QEMUs."""

from __future__ import annotations

import re
import select
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko
import pytest

from lab.deadline import Deadline
from lab.fleet.host_vm import RunningHost
from lab.machine.channels.ssh import parse_public_key
from tests.support.orphans import kill, leaked_qemus


@contextmanager
def host_client(host: RunningHost) -> Iterator[paramiko.SSHClient]:
    """A paramiko client that accepts the host's own key and no other."""
    ssh = paramiko.SSHClient()
    key = parse_public_key(host.host_key)
    ssh.get_host_keys().add(f"[127.0.0.1]:{host.port}", key.get_name(), key)
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect("127.0.0.1", host.port, username=host.user, pkey=paramiko.PKey.from_path(host.client_key),
                allow_agent=False, look_for_keys=False, timeout=30, banner_timeout=30, auth_timeout=30)
    try:
        yield ssh
    finally:
        ssh.close()


def run_on_host(client: paramiko.SSHClient, command: str, timeout: float = 60) -> str:
    """Run a shell command on the host; its output (stdout then stderr), failing the test on a non-zero exit."""
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    output = stdout.read().decode() + stderr.read().decode()
    status = stdout.channel.recv_exit_status()
    assert status == 0, f"`{command}` exited {status}: {output}"
    return output


def qemu_besides(host: RunningHost) -> dict[int, str]:
    """The QEMUs this test process started other than the host's own: a test's leak."""
    return {pid: command for pid, command in leaked_qemus().items() if pid != host.machine.pid}


def no_qemu_besides(host: RunningHost) -> None:
    """Fails the test when it left a QEMU besides the host's, after killing it (so the next test starts clean)."""
    leaked = qemu_besides(host)
    if leaked:
        kill(leaked)
        pytest.fail(f"QEMU processes left running (killed now): {sorted(leaked.items())}", pytrace=False)


def read_line(process: subprocess.Popen[str], pattern: str, timeout: float, what: str) -> re.Match[str]:
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
