"""The after-each-test QEMU check finds a QEMU however it was started, and kills it (tests/support/orphans.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.image.guest_image import GuestImage
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


def _sigterm_inner_pytest(test_file: Path, started: Callable[[], bool], seconds: float) -> str:
    """Run pytest on `test_file` as CI runs the suite, SIGTERM it once `started()` holds, and return its output."""
    inner = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                              str(test_file)], cwd=Path(__file__).parent.parent,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + seconds
        while not started() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started(), "the inner test never got going"
        inner.send_signal(signal.SIGTERM)
        output, _ = inner.communicate(timeout=seconds)
        return output
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait(30)


def test_sigterm_to_pytest_tears_down_what_tests_started(tmp_path: Path) -> None:
    """CI's timeout or a `kill` ends pytest with SIGTERM: fixtures still stop their QEMU (and any service)."""
    pid_file = tmp_path / "service.pid"
    (tmp_path / "test_inner.py").write_text(INNER_TEST.format(qemu=IDLE_QEMU, pid_file=str(pid_file)))
    pids: list[int] = []

    def qemu_started() -> bool:
        text = pid_file.read_text() if pid_file.exists() else ""
        pids.extend([int(text)] if text.isdigit() and not pids else [])
        return bool(pids)

    output = _sigterm_inner_pytest(tmp_path / "test_inner.py", qemu_started, 60)
    (qemu,) = pids
    assert pid_file.read_text() == "torn down", output
    assert not _alive(qemu)
    assert "KeyboardInterrupt" in output and "signal SIGTERM" in output, output


INNER_SCENARIO_TEST = '''
from pathlib import Path

import pytest

from lab.cli import main


@pytest.fixture(scope="session")
def service():
    try:
        yield
    finally:
        Path({state!r}).write_text("torn down")


def test_runs_a_scenario_in_process(service):
    Path({state!r}).write_text("running")
    main(["scenario", "hibernate-resume", "--runs-dir", {runs!r}])


def test_after_it():
    Path({next_test!r}).write_text("ran")
'''


@pytest.mark.guest
def test_sigterm_during_an_in_process_lab_stops_pytest(tmp_path: Path, default_image: GuestImage) -> None:
    """`lab.cli.main` called by a test must leave pytest's SIGTERM handling alone: the lab stops its run and
    writes its result, and then pytest stops too, tearing down its session fixtures, instead of the lab
    taking the signal as its own Ctrl-C and pytest going on to the next test."""
    state, runs, next_test = tmp_path / "state", tmp_path / "runs", tmp_path / "next-test"
    (tmp_path / "test_inner.py").write_text(
        INNER_SCENARIO_TEST.format(state=str(state), runs=str(runs), next_test=str(next_test)))
    output = _sigterm_inner_pytest(tmp_path / "test_inner.py", lambda: bool(list(runs.glob("*/console-boot1.log"))),
                                   120)
    assert state.read_text() == "torn down", output
    assert not next_test.exists(), f"pytest went on after the SIGTERM: {output}"
    assert "KeyboardInterrupt" in output, output
    (result,) = runs.glob("*/result.json")
    assert json.loads(result.read_text())["verdict"]["reason"] == "interrupted"
