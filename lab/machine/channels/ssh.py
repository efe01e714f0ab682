"""Shell commands in the guest over SSH (paramiko), to a server whose host key is pinned.

The guest's SSH server is reached through QEMU's user-mode network: a port on 127.0.0.1 that
QEMU forwards to the guest's port 22. The host key is the one generated for the image; a server
presenting any other key is refused, never trusted on first use. A QEMU process that exits takes
its port forward and every TCP session through it along: a resumed guest is a new connection.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import paramiko

from lab.deadline import Deadline, wait_until
from lab.errors import ChannelError, WaitTimeout
from lab.hosts.ssh_login import LoginRefused, log_in
from lab.machine.channels.shell import CommandResult

_log = logging.getLogger(__name__)
ATTEMPT_SECONDS = 10.0
RETRY_PAUSE = 0.5
HOST = "127.0.0.1"


def parse_public_key(line: str) -> paramiko.PKey:
    """A key from an OpenSSH public key line (`ssh-ed25519 AAAA… comment`)."""
    kind, blob, *_ = line.split()
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


class SshChannel:
    """One SSH connection to the guest: `connect`, `run`, `close`."""

    def __init__(self, port: int, user: str, host_key: paramiko.PKey, client_key: paramiko.PKey) -> None:
        self.port = port
        self.user = user
        self.host_key = host_key
        self.client_key = client_key
        self._client: paramiko.SSHClient | None = None

    @classmethod
    def from_files(cls, port: int, user: str, host_key: str, client_key: Path) -> SshChannel:
        """A channel pinned to `host_key` (an OpenSSH public key line), logging in with the key file `client_key`."""
        try:
            return cls(port, user, parse_public_key(host_key), paramiko.PKey.from_path(client_key))
        except (OSError, ValueError, paramiko.SSHException) as error:
            raise ChannelError(f"cannot load the image's SSH keys: {error}") from error

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[{HOST}]:{self.port}", self.host_key.get_name(), self.host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return client

    def connect(self, timeout: float) -> None:
        """Connect and log in, retrying while the guest's server is not answering yet.

        A wrong host key or a refused login is final: retrying would not change the guest's answer.
        """
        deadline = Deadline(timeout)
        last_error: list[str] = []

        def attempt() -> paramiko.SSHClient | None:
            client = self._new_client()
            seconds = max(min(ATTEMPT_SECONDS, deadline.remaining), 0.1)
            try:
                problem = log_in(client, (HOST, self.port), self.user, self.client_key, seconds,
                                 host_key_from="the image's", client_key_from="the image's")
            except LoginRefused as refused:
                raise ChannelError(f"SSH on {HOST}:{self.port} {refused}") from refused
            if problem is not None:
                last_error[:] = [problem]
                return None
            return client

        self._client = wait_until(attempt, timeout, f"the guest's SSH server on {HOST}:{self.port}",
                                  lambda: last_error, interval=RETRY_PAUSE)
        _log.debug("SSH %s@%s:%d logged in", self.user, HOST, self.port)

    @property
    def connected(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def run(self, command: str, timeout: float = 30) -> CommandResult:
        """Run a command through the guest user's shell; its exit status and its stdout and stderr, interleaved."""
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            raise ChannelError(f"SSH to {HOST}:{self.port} is not connected")
        deadline = Deadline(timeout)
        output = bytearray()
        try:
            session = transport.open_session(timeout=max(deadline.remaining, 0.1))
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise ChannelError(f"SSH to {HOST}:{self.port} opened no session for `{command}`: {error}") from error
        try:
            session.set_combine_stderr(True)
            session.exec_command(command)
            while True:
                session.settimeout(max(deadline.remaining, 0.01))
                data = session.recv(65536)
                if not data:
                    break
                output += data
            if not session.status_event.wait(max(deadline.remaining, 0.01)):
                raise TimeoutError
            status = session.recv_exit_status()
        except TimeoutError:
            raise WaitTimeout(f"`{command}` to finish over SSH", timeout, output.decode(errors="replace")
                              .splitlines()[-3:]) from None
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise ChannelError(f"SSH to {HOST}:{self.port} broke during `{command}`: {error}") from error
        finally:
            # A command given up on must not keep its session (and the guest's process on it) open.
            session.close()
        return CommandResult(command, status, output.decode(errors="replace"))

    def close(self) -> None:
        if self._client is not None:
            _log.debug("SSH %s@%s:%d closing", self.user, HOST, self.port)
            self._client.close()
            self._client = None
