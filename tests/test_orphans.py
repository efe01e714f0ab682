"""The after-each-test QEMU check finds a QEMU however it was started, and kills it (tests/support/orphans.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.orphans import kill, leaked_qemus

pytestmark = pytest.mark.qemu
IDLE_QEMU = "qemu-system-aarch64 -machine none -S -display none -monitor none -serial none -nodefaults"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_orphaned_grandchild_qemu_is_found_and_killed() -> None:
    """A shell starts QEMU in the background and exits: QEMU's parent is gone, as after a killed `lab`."""
    shell = subprocess.run(["sh", "-c", f"{IDLE_QEMU} >/dev/null 2>&1 & echo $!"], capture_output=True,
                           text=True, timeout=30, check=True)
    pid = int(shell.stdout)
    try:
        deadline = time.monotonic() + 30
        while pid not in leaked_qemus() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leaked_qemus().get(pid, "").startswith("qemu-system"), f"QEMU {pid} was not found"
        kill({pid: "qemu-system-aarch64"})
        assert not _alive(pid)
        assert pid not in leaked_qemus()
    finally:
        if _alive(pid):
            subprocess.run(["kill", "-KILL", str(pid)], check=False)


def test_a_qemu_under_another_parent_that_lives_is_found() -> None:
    """A QEMU two levels down whose parent still runs: not this process's child, still its leak."""
    parent = subprocess.Popen(["sh", "-c", f"{IDLE_QEMU} & wait"])
    try:
        deadline = time.monotonic() + 30
        while not (found := leaked_qemus()) and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = found
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(parent.pid)
        kill(found)
        assert not _alive(pid)
    finally:
        parent.kill()
        parent.wait(30)
