"""What the lab needs of the machine QEMU runs on, whichever machine that is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lab.lines import last_lines

COMMAND_SECONDS = 120.0


@dataclass(frozen=True)
class Completed:
    """A command run on a host: its status and what it printed."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def last_error_line(self) -> str:
        said = last_lines((self.stderr + self.stdout).decode(errors="replace"))
        return said[-1] if said else f"exit status {self.returncode}"


class HostProcess(Protocol):
    """A long-lived process on a host (QEMU), as subprocess.Popen describes one."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Endpoints(Protocol):
    """Where one QEMU process's channels and files live on its host, and how the lab reaches them."""

    def chardevs(self) -> dict[str, str]:
        """Each channel's socket address as QEMU's `-chardev socket,…` takes it (`path=…` or `host=…,port=…`)."""
        ...

    def local(self, name: str) -> Path:
        """The unix socket here through which the lab connects to channel `name`."""
        ...

    def host_file(self, local: Path) -> str:
        """Where QEMU writes a file (the console log) on its host that the lab wants at `local`."""
        ...

    def collect(self, local: Path) -> None:
        """Bring the file written for `local` here (nothing to do when the host is this machine)."""
        ...

    def close(self) -> None: ...


class Host(Protocol):
    """What the lab needs of the machine QEMU runs on."""

    name: str
    launch_seconds: float
    """How long QEMU may take to start and answer QMP there (longer on a remote or emulated host)."""
    patience: float
    """How many times longer a guest's waits may take there than here: a host emulated under TCG runs its
    guests several times slower than a real one, and a scenario's timeouts are written for a real one."""

    def run(self, argv: list[str], timeout: float = COMMAND_SECONDS, stdin: bytes | None = None) -> Completed: ...

    def start(self, argv: list[str], output: Path, setup: Callable[[], None] | None = None) -> HostProcess: ...

    def make_dir(self, prefix: str) -> str: ...

    def remove_tree(self, path: str) -> None: ...

    def read_file(self, path: str) -> bytes: ...

    def write_file(self, path: str, data: bytes) -> None: ...

    def fetch(self, path: str, into: Path) -> None: ...

    def put(self, local: Path, path: str) -> None:
        """A file of this machine's copied to `path` on the host (a run's own file, not kept by sha256)."""
        ...

    def file_for(self, local: Path) -> str:
        """The host's path of a file of this machine's (copied there if need be)."""
        ...

    def endpoints(self, names: tuple[str, ...], prefix: str) -> Endpoints: ...

    def tcp_channel(self, port: int) -> int: ...

    def close(self) -> None: ...
