"""The after-each-test QEMU check finds a QEMU however it was started, and kills it (tests/support/orphans.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
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


INNER_TEST = '''
import subprocess, time
from pathlib import Path

import pytest


@pytest.fixture
def service(tmp_path_factory):
    process = subprocess.Popen({qemu!r}.split())
    Path({pid_file!r}).write_text(str(process.pid))
    try:
        yield process
    finally:
        process.kill()
        process.wait(30)
        Path({pid_file!r}).write_text("torn down")


def test_waits(service):
    time.sleep(600)
'''


def test_sigterm_to_pytest_tears_down_what_tests_started(tmp_path: Path) -> None:
    """CI's timeout or a `kill` ends pytest with SIGTERM: fixtures still stop their QEMU (and any service)."""
    pid_file = tmp_path / "service.pid"
    (tmp_path / "test_inner.py").write_text(INNER_TEST.format(qemu=IDLE_QEMU, pid_file=str(pid_file)))
    inner = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                              str(tmp_path / "test_inner.py")], cwd=Path(__file__).parent.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().isdigit()) and time.monotonic() < deadline:
            time.sleep(0.1)
        qemu = int(pid_file.read_text())
        inner.send_signal(signal.SIGTERM)
        output, _ = inner.communicate(timeout=60)
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait(30)
    assert pid_file.read_text() == "torn down", output
    assert not _alive(qemu)
    assert "KeyboardInterrupt" in output and "signal SIGTERM" in output, output
