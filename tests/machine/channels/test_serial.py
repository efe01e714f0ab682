"""Fail fast on kernel trouble: SerialConsole against a scripted guest over a real unix socket.

The scripted guest writes lines at set times (an Oops, the rest of its report, a prompt) and then
says nothing, keeping the socket open as a hung QEMU would; the console under test reads it as it
reads QEMU's console socket.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from lab.errors import KernelTrouble, UsageError, WaitTimeout
from lab.machine.channels.serial import TROUBLE_QUIET_ENV, SerialConsole, trouble_quiet_seconds
from lab.machine.channels.shell import GuestShell
from tests.support.timing import LOADED_HOST_SLACK

OOPS = "[   19.123232] Internal error: Oops: 0000000096000006 [#1] SMP"
OOPS_REPORT = [
    "[   19.123232] pc : trans_pgd_create_copy+0x1f8/0x790",
    "[   19.123232] Call trace:",
    "[   19.123232]  trans_pgd_create_copy+0x1f8/0x790",
    "[   19.123232] ---[ end trace 0000000000000000 ]---",
]
QUIET = 0.6
"""The console's quiet time in these tests: long enough for a loaded host, short enough to be fast."""
MARGIN = LOADED_HOST_SLACK
"""How much later than the quiet time a wait may end on a loaded host."""
PATIENT = 2.0
"""The quiet time where the guest keeps talking: each gap a fraction of it, all of them well over it."""


class ScriptedGuest:
    """Serves one connection: sends each (delay, text) in turn, then stays silent until closed."""

    def __init__(self, path: Path, script: list[tuple[float, str]]) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.script = script
        self.sent: dict[int, float] = {}
        """When each script entry went out (monotonic), by index: noted before sending, so a reader that
        has seen an entry always finds its time."""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        peer, _ = self.server.accept()
        with peer:
            for index, (delay, text) in enumerate(self.script):
                if self.done.wait(delay):
                    return
                self.sent[index] = time.monotonic()
                peer.sendall(text.replace("\n", "\r\n").encode())
            self.done.wait()

    def close(self) -> None:
        self.done.set()
        self.server.close()
        self.thread.join(5)


@pytest.fixture
def scripted(tmp_path: Path):
    """Start a scripted guest and a console connected to it; both are closed after the test."""
    opened: list[tuple[ScriptedGuest, SerialConsole]] = []

    def start(script: list[tuple[float, str]], quiet: float | None = QUIET) -> tuple[ScriptedGuest, SerialConsole]:
        path = tmp_path / f"console{len(opened)}.sock"
        guest = ScriptedGuest(path, script)
        console = SerialConsole(path, time.monotonic(), trouble_quiet=quiet)
        console.connect(2)
        opened.append((guest, console))
        return guest, console

    yield start
    for guest, console in opened:
        console.close()
        guest.close()


def lines(*texts: str) -> str:
    return "".join(f"{text}\n" for text in texts)


def test_an_oops_then_silence_ends_the_wait_after_the_quiet_time_quoting_the_oops(scripted):
    guest, console = scripted([(0.1, lines("[    1.0] booting", OOPS, *OOPS_REPORT))])
    started = time.monotonic()
    with pytest.raises(KernelTrouble) as caught:
        console.expect("lab-init: ready", 60, "boot2 to become ready")
    ended = time.monotonic()
    assert QUIET <= ended - guest.sent[0] < QUIET + MARGIN
    assert ended - started < 60 / 4
    trouble = caught.value
    assert trouble.line == OOPS
    assert trouble.what == "boot2 to become ready"
    assert str(trouble) == (f"kernel trouble while waiting for boot2 to become ready: {OOPS!r}, "
                            f"then {QUIET:g}s of silence")
    assert trouble.exit_code == 1
    assert trouble.last_seen[-1] == OOPS_REPORT[-1]
    assert trouble.seen_at is not None and trouble.stopped_at is not None
    # seen_at is noted when the Oops line is recorded, a little after the silence began to count
    assert QUIET - 0.05 <= trouble.stopped_at - trouble.seen_at < QUIET + MARGIN


@pytest.mark.parametrize("line", [
    "[    3.000000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b",
    "[    5.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
    "[   60.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [cat:154]",
    "[    7.000000] Oops [#1]",
])
def test_a_panic_or_bug_is_kernel_trouble_too(scripted, line):
    _, console = scripted([(0.05, lines(line))])
    with pytest.raises(KernelTrouble) as caught:
        console.read_until(lambda text: "never" in text, 30, "the guest to finish `true`")
    assert caught.value.line == line


def test_silence_is_counted_from_the_last_output_so_a_talking_guest_is_waited_for(scripted):
    """After the Oops the guest keeps printing (slower than the quiet time in total, each line
    within it): the wait goes on, and ends on what it waited for."""
    chatter = [(PATIENT / 8, lines(f"[   19.2] still talking {n}")) for n in range(12)]
    guest, console = scripted([(0.05, lines(OOPS)), *chatter, (PATIENT / 8, "lab-init: ready\n")], quiet=PATIENT)
    match = console.expect("lab-init: ready", 30, "boot2 to become ready")
    assert match.group(0) == "lab-init: ready"
    assert guest.sent[len(chatter) + 1] - guest.sent[0] > PATIENT


def test_a_partial_line_after_the_oops_is_output_too(scripted):
    """A prompt without a newline still says the guest is alive."""
    _, console = scripted([(0.05, lines(OOPS)), *[(PATIENT / 8, ".") for _ in range(12)],
                          (PATIENT / 8, "\nlab-init: ready\n")], quiet=PATIENT)
    assert console.expect("lab-init: ready", 30, "ready").group(0) == "lab-init: ready"


def test_without_trouble_silence_runs_to_the_timeout(scripted):
    _, console = scripted([(0.05, lines("[    1.0] booting", "[    1.1] Call trace:", "lab-init: Oops BUG:"))])
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        console.expect("never", 2 * QUIET + 0.5, "ready")
    assert time.monotonic() - started >= 2 * QUIET + 0.5


def test_a_console_without_a_quiet_time_waits_out_its_timeout(scripted):
    _, console = scripted([(0.05, lines(OOPS))], quiet=None)
    with pytest.raises(WaitTimeout):
        console.expect("never", 2 * QUIET, "ready")


def test_trouble_expected_by_the_caller_does_not_end_the_wait(scripted):
    _, console = scripted([(0.05, lines("[   3.0] sysrq: Trigger a crash",
                                        "[   3.0] Kernel panic - not syncing: sysrq triggered crash"))])
    started = time.monotonic()
    with console.expecting_trouble(), pytest.raises(WaitTimeout):
        console.drain_until_closed(2 * QUIET + 0.5, "QEMU to exit after the crash")
    assert time.monotonic() - started >= 2 * QUIET + 0.5
    assert console.trouble is not None and "sysrq triggered crash" in console.trouble[1]
    with pytest.raises(KernelTrouble):
        console.drain_until_closed(30, "QEMU to exit")


def test_trouble_seen_earlier_gives_each_new_wait_the_whole_quiet_time(scripted):
    """A wait that begins long after the trouble (the lab was busy elsewhere) still lets the guest
    speak for the quiet time before it gives up."""
    _, console = scripted([(0.05, lines(OOPS))])
    with pytest.raises(KernelTrouble):
        console.expect("never", 30, "first")
    time.sleep(2 * QUIET)
    started = time.monotonic()
    with pytest.raises(KernelTrouble):
        console.expect("never", 30, "second")
    assert time.monotonic() - started >= QUIET * 0.9


def test_the_first_trouble_line_is_the_one_quoted(scripted):
    first = "[    9.0] BUG: unable to handle page fault for address: ffff0000"
    _, console = scripted([(0.05, lines(first, OOPS, "[   10.0] Kernel panic - not syncing: Fatal exception"))])
    with pytest.raises(KernelTrouble) as caught:
        console.expect("never", 30, "ready")
    assert caught.value.line == first


def test_a_shell_probe_loop_ends_on_trouble_not_at_its_timeout(scripted):
    """wait_responsive retries silent probes until its timeout; kernel trouble ends it early."""
    _, console = scripted([(0.05, lines("[    1.0] booting", OOPS, *OOPS_REPORT))])
    started = time.monotonic()
    with pytest.raises(KernelTrouble):
        GuestShell(console).wait_responsive(60)
    assert time.monotonic() - started < 3.0 + QUIET + MARGIN


def test_the_quiet_time_comes_from_the_scenario_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv(TROUBLE_QUIET_ENV, raising=False)
    assert trouble_quiet_seconds() == 5.0
    monkeypatch.setenv(TROUBLE_QUIET_ENV, "2.5")
    assert trouble_quiet_seconds() == 2.5
    assert trouble_quiet_seconds(12) == 12.0
    for bad in ("soon", "0", "-1", "nan", "7200"):
        monkeypatch.setenv(TROUBLE_QUIET_ENV, bad)
        with pytest.raises(UsageError, match=TROUBLE_QUIET_ENV):
            trouble_quiet_seconds()
