"""The OFF2 probe reads a QEMU build's whole QMP schema, also when its output is read slowly or the machine
is loaded; a failed probe's error is one short line, the rest in a log."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.errors import SetupError
from lab.hosts.base import COMMAND_SECONDS, Completed
from lab.hosts.local import LOCAL
from lab.qemu.builds import ERROR_LINE_CHARS, ask_reports_off2

pytestmark = pytest.mark.qemu
DEBIAN_QEMU = ["qemu-system-aarch64"]


@dataclass
class SlowReaderHost:
    """This machine, with whatever a command prints read only after a pause: the pipe fills, as when the
    reader is starved on a loaded machine or behind an SSH connection."""

    name: str = "slow-reader"
    pause: float = 1.0

    def run(self, argv: list[str], timeout: float = COMMAND_SECONDS, stdin: bytes | None = None) -> Completed:
        slow = ["sh", "-c", f'"$@" | {{ sleep {self.pause}; cat; }}', "sh", *argv]
        return LOCAL.run(slow, timeout=timeout, stdin=stdin)


def test_a_schema_read_after_the_pipe_filled_is_whole() -> None:
    """A 230 KB reply behind a 64 KiB pipe: QEMU on `-qmp stdio` quit with the rest unsent."""
    assert ask_reports_off2(DEBIAN_QEMU, SlowReaderHost()) is False


def test_repeated_probes_on_a_loaded_machine_all_answer() -> None:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: ask_reports_off2(DEBIAN_QEMU), range(16)))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(30)
    assert answers == [False] * 16


def test_a_failed_probe_says_one_short_line_and_keeps_the_output_in_a_log() -> None:
    """A build that answers a 150 KB line of garbage, as a cut-off schema reply looks."""
    garbage = ["sh", "-c", "head -c 150000 /dev/zero | tr '\\0' x; exit 3", "garbage-qemu"]
    with pytest.raises(SetupError) as caught:
        ask_reports_off2(garbage)
    message = str(caught.value)
    assert message.startswith("cannot ask garbage-qemu for its QMP schema: xxx")
    assert len(message.splitlines()) == 1 and len(message) < ERROR_LINE_CHARS + 300, len(message)
    log = Path(message.rsplit("(QEMU's output: ", 1)[1].rstrip(")"))
    assert log.read_text().count("x") >= 150000
    log.unlink()
