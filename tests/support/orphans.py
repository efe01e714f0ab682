"""QEMU processes a test left behind, however they were started, and killing them."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

OWNER_VARIABLE = "LAB_TESTS_OWNER"
"""Set to the pytest process's pid in its environment, so every QEMU it starts, directly, through a `lab`
subprocess or orphaned by one, carries it; each xdist worker sets its own."""


def mark_as_owner() -> None:
    os.environ[OWNER_VARIABLE] = str(os.getpid())


def leaked_qemus() -> dict[int, str]:
    """Live QEMU processes started under this pytest process, however far down: found by the owner mark in
    their environment, which survives a parent that died (about 8 ms for a scan of /proc)."""
    mark = f"{OWNER_VARIABLE}={os.environ[OWNER_VARIABLE]}".encode()
    leaked = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            command = comm.read_text().strip()
            if not command.startswith("qemu-system"):
                continue
            process = comm.parent
            if _is_zombie(process) or mark not in (process / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        leaked[int(process.name)] = command
    return leaked


def _is_zombie(process: Path) -> bool:
    """A zombie has exited; its parent reaps it (and a zombie's environ reads empty anyway)."""
    return process.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def kill(leaked: dict[int, str]) -> None:
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    for pid in leaked:
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            try:
                if _is_zombie(Path(f"/proc/{pid}")):
                    break
            except OSError:
                break
            time.sleep(0.05)
