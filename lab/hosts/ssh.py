"""A lab host driven over SSH (`--host ssh://root@HOST:PORT`), with paramiko.

- QEMU listens on the host's loopback; each channel gets a local unix socket (or TCP port) here
  whose connections are carried to it through the SSH connection (direct-tcpip), which plain
  dropbear serves as well as OpenSSH;
- QEMU is started under a small shell wrapper whose stdin is the SSH session: when the session
  ends (the lab finished, was killed, or lost the host) the wrapper stops QEMU, so nothing is left
  running on the host;
- files a run needs are copied once and kept on the host by sha256 (`/var/cache/lab/files`);
- the host key is pinned: a host that presents another key is refused, never trusted on first use.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import posixpath
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import paramiko

from lab.deadline import Deadline
from lab.digest import sha256_file
from lab.errors import ChannelError, HostLost, SetupError, UsageError, WaitTimeout
from lab.hosts.base import COMMAND_SECONDS, Completed, HostProcess
from lab.hosts.ssh_forward import Forward
from lab.hosts.ssh_login import LoginRefused, log_in

_log = logging.getLogger(__name__)
FILE_CACHE = "/var/cache/lab/files"
"""Where an SSH host keeps the files runs need, by sha256 (the kvm-host image pre-seeds it)."""
RUNS_ROOT = "/run/lab/runs"
CONNECT_SECONDS = 20.0
STOP_SECONDS = 3.0
"""The wrapper's grace between SIGTERM and SIGKILL for QEMU when its session ends."""
_COPY_CHUNK = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class HostLogin:
    """How to reach an SSH host: the address, the user, the pinned host key, the client key."""

    host: str
    port: int
    user: str
    host_key: paramiko.PKey
    client_key: paramiko.PKey
    patience: float = 1.0
    """How many times longer a guest's waits take there than here (see Host.patience)."""

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"


def parse_host_url(url: str) -> tuple[str, str, int]:
    """(user, host, port) of `ssh://user@host:port`; anything else is a usage error."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise UsageError(f"--host wants ssh://user@host[:port], got {url!r}")
    try:
        port = parts.port or 22
    except ValueError as error:
        raise UsageError(f"--host {url!r}: {error}") from error
    return parts.username or "root", parts.hostname, port


WRAPPER = """\
exec 3<&0
{command} </dev/null >{output} 2>&1 &
pid=$!
echo "lab-pid $pid"
( read -r line <&3; kill -TERM $pid 2>/dev/null; sleep {grace}; kill -KILL $pid 2>/dev/null ) &
watch=$!
wait $pid
status=$?
kill $watch 2>/dev/null
echo "lab-exit $status"
exit $status
"""
"""Runs QEMU on the host; when the SSH session's stdin ends (the lab is done, killed or gone) it stops QEMU."""


class SshProcess:
    """A process on an SSH host started under WRAPPER; `poll`/`wait` read its exit from the session."""

    def __init__(self, host: SshHost, session: paramiko.Channel, pid: int, output: str, local_output: Path) -> None:
        self.host = host
        self.session = session
        self.pid = pid
        self.output = output
        self.local_output = local_output
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.session.exit_status_ready():
            self._finish(self.session.recv_exit_status())
        elif self.returncode is None and (self.session.closed or not self.host.alive):
            self._finish(-1)
        return self.returncode

    def _finish(self, code: int) -> None:
        """Bring the output home, then remove its private directory from the host."""
        self.returncode = code
        with contextlib.suppress(ChannelError, SetupError, WaitTimeout):
            self.host.fetch(self.output, self.local_output)
            self.host.remove_tree(posixpath.dirname(self.output))

    def wait(self, timeout: float | None = None) -> int:
        deadline = Deadline(timeout if timeout is not None else 1e9)
        while (code := self.poll()) is None:
            if deadline.expired:
                raise subprocess.TimeoutExpired(f"pid {self.pid} on {self.host.name}", timeout or 0)
            time.sleep(min(0.05, deadline.remaining))
        return code

    def _signal(self, name: str) -> None:
        if self.poll() is None:
            with contextlib.suppress(ChannelError, SetupError, WaitTimeout):
                self.host.run(["kill", f"-{name}", str(self.pid)], timeout=10)

    def terminate(self) -> None:
        self._signal("TERM")

    def kill(self) -> None:
        self._signal("KILL")
        with contextlib.suppress(OSError, EOFError):
            self.session.shutdown_write()


class SshEndpoints:
    """A QEMU's channels on random ports of the host's loopback, each carried to a unix socket here;
    its files in a private directory on the host, fetched when wanted. A port someone else holds makes
    QEMU fail to start ("Address already in use"), and the launch is retried with new ones."""

    def __init__(self, host: SshHost, names: tuple[str, ...], prefix: str) -> None:
        self.host = host
        self.directory = host.make_dir(prefix)
        self.scratch = Path(tempfile.mkdtemp(prefix=prefix))
        ports = secrets.SystemRandom().sample(range(20000, 60000), len(names))
        self.ports = dict(zip(names, ports, strict=True))
        self._forwards = [host.forward_unix(self.local(name), port) for name, port in self.ports.items()]

    def chardevs(self) -> dict[str, str]:
        return {name: f"host=127.0.0.1,port={port}" for name, port in self.ports.items()}

    def local(self, name: str) -> Path:
        return self.scratch / f"{name}.sock"

    def host_file(self, local: Path) -> str:
        return posixpath.join(self.directory, local.name)

    def collect(self, local: Path) -> None:
        with contextlib.suppress(ChannelError, SetupError, WaitTimeout):
            self.host.fetch(self.host_file(local), local)

    def close(self) -> None:
        for forward in self._forwards:
            forward.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.host.remove_tree(self.directory)


class SshHost:
    """A lab host driven over SSH; see the module docstring."""

    launch_seconds = 60.0

    def __init__(self, login: HostLogin, timeout: float = CONNECT_SECONDS) -> None:
        self.login = login
        self.name = login.url
        self.patience = login.patience
        self._client = paramiko.SSHClient()
        self._client.get_host_keys().add(self._known_as, login.host_key.get_name(), login.host_key)
        self._client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self._forwards: list[Forward] = []
        self._scratch = Path(tempfile.mkdtemp(prefix="lab-host-"))
        try:
            problem = log_in(self._client, (login.host, login.port), login.user, login.client_key, timeout,
                             host_key_from="the one pinned for it", client_key_from="the lab's")
        except LoginRefused as refused:
            self._cleanup()
            raise SetupError(f"host {login.url} {refused}") from refused
        if problem is not None:
            self._cleanup()
            raise SetupError(f"host {login.url} cannot be reached: {problem}")
        transport = self._client.get_transport()
        if transport is None:
            self._cleanup()
            raise SetupError(f"host {login.url} closed the SSH connection as it was made")
        transport.set_keepalive(5)
        self._transport = transport
        _log.debug("host %s: logged in", login.url)

    @property
    def _known_as(self) -> str:
        return self.login.host if self.login.port == 22 else f"[{self.login.host}]:{self.login.port}"

    @property
    def alive(self) -> bool:
        return self._transport.is_active()

    def _session(self, timeout: float) -> paramiko.Channel:
        if not self.alive:
            raise HostLost(f"lost the connection to host {self.name}")
        try:
            return self._transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostLost(f"host {self.name} stopped answering: {error}") from error

    def run(self, argv: list[str], timeout: float = COMMAND_SECONDS, stdin: bytes | None = None) -> Completed:
        """A command on the host, through its login shell, with everything it printed."""
        session = self._session(timeout)
        deadline = Deadline(timeout)
        stdout, stderr = bytearray(), bytearray()
        try:
            session.exec_command(shlex.join(argv))
            if stdin is not None:
                session.sendall(stdin)
            session.shutdown_write()
            while not (session.exit_status_ready() and not session.recv_ready() and not session.recv_stderr_ready()):
                if deadline.expired:
                    raise WaitTimeout(f"`{shlex.join(argv)}` to finish on {self.name}", timeout)
                if not self.alive:
                    raise HostLost(f"lost the connection to host {self.name} during `{shlex.join(argv)}`")
                session.settimeout(min(0.2, max(deadline.remaining, 0.01)))
                with contextlib.suppress(TimeoutError):
                    stdout += session.recv(65536)
                while session.recv_stderr_ready():
                    stderr += session.recv_stderr(65536)
            return Completed(tuple(argv), session.recv_exit_status(), bytes(stdout), bytes(stderr))
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostLost(f"host {self.name} broke off `{shlex.join(argv)}`: {error}") from error
        finally:
            session.close()

    def check(self, argv: list[str], what: str, timeout: float = COMMAND_SECONDS) -> Completed:
        done = self.run(argv, timeout)
        if done.returncode != 0:
            raise SetupError(f"{what} on host {self.name}: {done.last_error_line()}")
        return done

    def start(self, argv: list[str], output: Path, setup: Callable[[], None] | None = None) -> HostProcess:
        """`argv` on the host under WRAPPER, its output in a host file fetched into `output` when it ends."""
        remote_output = posixpath.join(self.make_dir("lab-qemu-"), output.name)
        session = self._session(COMMAND_SECONDS)
        script = WRAPPER.format(command=shlex.join(argv), output=shlex.quote(remote_output), grace=STOP_SECONDS)
        session.exec_command(f"sh -c {shlex.quote(script)}")
        session.settimeout(COMMAND_SECONDS)
        first = b""
        try:
            while not first.endswith(b"\n"):
                chunk = session.recv(1)
                if not chunk:
                    raise ChannelError(f"host {self.name} ended the session before starting {argv[0]}")
                first += chunk
        except TimeoutError as error:
            raise WaitTimeout(f"{argv[0]} to start on {self.name}", COMMAND_SECONDS) from error
        words = first.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "lab-pid":
            raise ChannelError(f"host {self.name} did not start {argv[0]}: {first!r}")
        return SshProcess(self, session, int(words[1]), remote_output, output)

    def make_dir(self, prefix: str) -> str:
        path = posixpath.join(RUNS_ROOT, f"{prefix}{secrets.token_hex(6)}")
        self.check(["mkdir", "-p", "-m", "700", path], f"cannot make {path}")
        return path

    def remove_tree(self, path: str) -> None:
        if posixpath.commonpath([path, RUNS_ROOT]) == RUNS_ROOT:
            with contextlib.suppress(ChannelError, WaitTimeout):
                self.run(["rm", "-rf", "--", path])

    def read_file(self, path: str) -> bytes:
        return self.check(["cat", "--", path], f"cannot read {path}").stdout

    def write_file(self, path: str, data: bytes) -> None:
        done = self.run(["sh", "-c", f"cat > {shlex.quote(path)}"], stdin=data)
        if done.returncode != 0:
            raise SetupError(f"cannot write {path} on host {self.name}: {done.last_error_line()}")

    def fetch(self, path: str, into: Path) -> None:
        """The host's `path` written to `into` as it arrives: a run's disk can be hundreds of megabytes. A local
        write error (a full run directory) is raised as it is, not blamed on the host."""
        partial = into.with_name(f".{into.name}.partial")
        session = self._session(COMMAND_SECONDS)
        status, said = -1, b""
        try:
            with partial.open("wb") as stream:
                self._talk(session, f"sending {path}", lambda: session.exec_command(shlex.join(["cat", "--", path])))
                while block := self._talk(session, f"sending {path}", lambda: session.recv(_COPY_CHUNK)):
                    stream.write(block)
            status = self._talk(session, f"sending {path}", session.recv_exit_status)
            said = session.recv_stderr(65536) if session.recv_stderr_ready() else b""
        finally:
            session.close()
            if status != 0:
                partial.unlink(missing_ok=True)
        if status != 0:
            raise SetupError(f"cannot read {path} on host {self.name}: "
                             f"{Completed(('cat', path), status, b'', said).last_error_line()}")
        partial.replace(into)

    def _talk(self, session: paramiko.Channel, doing: str, step: Callable[[], _T]) -> _T:
        """One exchange with the host on `session`, its failures named as the host's."""
        session.settimeout(COMMAND_SECONDS)
        try:
            return step()
        except TimeoutError as error:
            raise WaitTimeout(f"host {self.name} {doing}", COMMAND_SECONDS) from error
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise HostLost(f"host {self.name} broke off {doing}: {error}") from error

    def put(self, local: Path, path: str) -> None:
        """`local` copied to the host's `path` as it is read, and checked there by sha256; nothing is left at
        `path` when the copy fails."""
        digest = hashlib.sha256()
        session = self._session(COMMAND_SECONDS)
        arrived = False
        try:
            self._talk(session, f"receiving {local.name}",
                       lambda: session.exec_command(f"cat > {shlex.quote(path)}"))
            with local.open("rb") as stream:
                for block in iter(lambda: stream.read(_COPY_CHUNK), b""):
                    digest.update(block)
                    self._talk(session, f"receiving {local.name}", functools.partial(session.sendall, block))
            session.shutdown_write()
            status = self._talk(session, f"receiving {local.name}", session.recv_exit_status)
            if status != 0:
                raise SetupError(f"copying {local} to {path} on host {self.name} failed (status {status})")
            got = self.check(["sha256sum", "--", path], f"cannot check {path}").text().split()[:1]
            if got != [digest.hexdigest()]:
                raise SetupError(f"{local} arrived on host {self.name} changed (sha256 {got})")
            arrived = True
        finally:
            session.close()
            if not arrived:
                with contextlib.suppress(ChannelError, WaitTimeout):
                    self.run(["rm", "-f", "--", path])

    def file_for(self, local: Path) -> str:
        """The host's copy of `local`, by its sha256: copied once (and checked), then reused by every run.

        A file is only ever put in the cache by renaming a copy whose sha256 was checked there, so a
        file present under its digest is taken as it is (hashing it again would cost seconds per run).
        """
        cached = posixpath.join(FILE_CACHE, sha256_file(local))
        if self.run(["test", "-f", cached]).returncode == 0:
            return cached
        self.check(["mkdir", "-p", FILE_CACHE], f"cannot make {FILE_CACHE}")
        partial = f"{cached}.{secrets.token_hex(4)}"
        self.put(local, partial)
        self.check(["mv", "-f", partial, cached], f"cannot keep {cached}")
        return cached

    def _listen(self, family: int, address: str | tuple[str, int]) -> socket.socket:
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(8)
        return listener

    def endpoints(self, names: tuple[str, ...], prefix: str) -> SshEndpoints:
        return SshEndpoints(self, names, prefix)

    def forward_unix(self, path: Path, port: int) -> Forward:
        """Connections to the unix socket `path` here, carried to 127.0.0.1:PORT on the host."""
        forward = Forward(self._transport, self._listen(socket.AF_UNIX, str(path)), ("127.0.0.1", port))
        self._forwards.append(forward)
        return forward

    def tcp_channel(self, port: int) -> int:
        """A local TCP port on 127.0.0.1 carried to the same port on the host's loopback."""
        listener = self._listen(socket.AF_INET, ("127.0.0.1", 0))
        self._forwards.append(Forward(self._transport, listener, ("127.0.0.1", port)))
        local_port: int = listener.getsockname()[1]
        return local_port

    def _cleanup(self) -> None:
        for forward in self._forwards:
            forward.close()
        self._forwards.clear()
        self._client.close()
        for leftover in self._scratch.glob("*"):
            leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._scratch.rmdir()

    def close(self) -> None:
        _log.debug("host %s: closing the SSH connection", self.name)
        self._cleanup()

