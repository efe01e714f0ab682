"""This machine as a lab host: paths are local paths and channels need no carrying."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from lab.errors import SetupError, WaitTimeout
from lab.hosts.base import COMMAND_SECONDS, Completed, Host, HostProcess


class LocalEndpoints:
    """Unix sockets in a private directory (mode 0700), removed with it; files are written in place."""

    def __init__(self, names: tuple[str, ...], prefix: str) -> None:
        self.names = names
        self.directory = Path(tempfile.mkdtemp(prefix=prefix))

    def chardevs(self) -> dict[str, str]:
        return {name: f"path={self.local(name)}" for name in self.names}

    def local(self, name: str) -> Path:
        return self.directory / f"{name}.sock"

    def host_file(self, local: Path) -> str:
        return str(local)

    def collect(self, local: Path) -> None:
        """QEMU wrote it in place."""

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class LocalHost:
    """This machine."""

    name = "local"
    launch_seconds = 15.0
    patience = 1.0

    def run(self, argv: list[str], timeout: float = COMMAND_SECONDS, stdin: bytes | None = None) -> Completed:
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
        except FileNotFoundError as error:
            raise SetupError(f"{argv[0]} not found on this host") from error
        except subprocess.TimeoutExpired as error:
            raise WaitTimeout(f"`{shlex.join(argv)}` to finish", timeout) from error
        return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)

    def start(self, argv: list[str], output: Path, setup: Callable[[], None] | None = None) -> HostProcess:
        with output.open("wb") as stream:
            try:
                return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stream, stderr=stream,
                                        preexec_fn=setup)
            except OSError as error:
                raise SetupError(f"cannot start {argv[0]}: {error.strerror}") from error

    def make_dir(self, prefix: str) -> str:
        return tempfile.mkdtemp(prefix=prefix)

    def remove_tree(self, path: str) -> None:
        subprocess.run(["rm", "-rf", "--", path], check=False, timeout=COMMAND_SECONDS)

    def read_file(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def write_file(self, path: str, data: bytes) -> None:
        Path(path).write_bytes(data)

    def fetch(self, path: str, into: Path) -> None:
        """Nothing to carry: the file is here already (callers pass the run directory's own paths)."""

    def put(self, local: Path, path: str) -> None:
        shutil.copyfile(local, path)

    def file_for(self, local: Path) -> str:
        return str(local)

    def endpoints(self, names: tuple[str, ...], prefix: str) -> LocalEndpoints:
        return LocalEndpoints(names, prefix)

    def tcp_channel(self, port: int) -> int:
        return port

    def close(self) -> None:
        """Nothing to let go of."""


LOCAL = LocalHost()


def program_on(host: Host, program: str) -> Path | None:
    """Where `program` is on `host`'s PATH (this machine's, or the lab host's login shell's), or None."""
    if host is LOCAL:
        found = shutil.which(program)
        return Path(found) if found else None
    done = host.run(["sh", "-c", f"command -v {shlex.quote(program)}"])
    return Path(done.text().strip()) if done.returncode == 0 and done.text().strip() else None
