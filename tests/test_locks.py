"""held_lock across processes: a second lab process waits for the first, and goes on when it lets go."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lab.locks import held_lock

pytestmark = pytest.mark.timeout(120)

HOLDER = """
import sys
from pathlib import Path
from lab.locks import held_lock
with held_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_process_waits_for_the_first_to_let_go(tmp_path: Path) -> None:
    lock_file = tmp_path / "new" / "dir" / "build.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    acquired = threading.Event()

    def take() -> None:
        with held_lock(lock_file):
            acquired.set()

    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not acquired.wait(1.0), "the lock was taken while another process held it"
        holder.stdin.close()
        assert acquired.wait(60), "the lock was not taken after its holder let go"
        waiter.join(60)
    finally:
        holder.kill()
        holder.wait(30)
