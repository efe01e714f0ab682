"""Subreaper that starts a LocalSlurmCluster's daemons, so nothing the cluster starts can outlive the tests.

slurmd double-forks every slurmstepd, which would orphan it to init and out of reach of its test. As a child
subreaper (prctl PR_SET_CHILD_SUBREAPER) this process inherits those orphans instead: every process of the
cluster stays below it, it reaps them at once (no <defunct> slurmstepd lingers), and "no child left" proves
that nothing survived. It kills everything below it when told to ("shutdown") or when its stdin reaches EOF
because the test process died, even by SIGKILL; then it also removes the cluster's directory.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
  {"op": "spawn", "name": N, "argv": [...], "env": {...}, "log": PATH} -> {"pid": PID}
  {"op": "status"}                                                     -> {"exited": {NAME: STATUS}}
  {"op": "shutdown", "grace": SECONDS}                                 -> {"left": ["PID COMM", ...]}
STATUS is the exit code, or minus the signal number. Standard library only: it runs as a plain script.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def _descendants(root: int) -> dict[int, str]:
    """Live (non-zombie) processes below `root`, as pid -> command name."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
            fields = tail.split()
        except (OSError, ValueError):
            continue
        if fields[0] != "Z":
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            names[pid] = head.split("(", 1)[1]
    below: dict[int, str] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in below}
        below.update({pid: names[pid] for pid in frontier})
    return below


class Supervisor:
    """Spawns named daemons, records how they ended, and kills everything below it on request."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.exited: dict[str, int] = {}

    def reap(self) -> bool:
        """Collect every ended child: the daemons and any orphan that was reparented here.

        Returns whether any child is left, live or not yet collected.
        """
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid in self.names:
                self.exited[self.names[pid]] = os.waitstatus_to_exitcode(status)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], log: str) -> int:
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                for number in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                    signal.signal(number, signal.SIG_DFL)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(output, 1)
                os.dup2(output, 2)
                os.execvpe(argv[0], argv, env)
            except BaseException as error:
                os.write(output, f"supervisor: cannot start {argv}: {error}\n".encode())
            finally:
                os._exit(127)
        os.close(output)
        self.names[pid] = name
        return pid

    def kill_all(self, grace: float) -> list[str]:
        """SIGTERM everything below, SIGKILL what is left after `grace` s; return what survived even that."""
        for number, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in _descendants(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, number)
            deadline = time.monotonic() + wait
            # Done only when no child is left at all: a zombie orphan must be collected here, not by init.
            while self.reap() and time.monotonic() < deadline:
                time.sleep(0.05)
        return [f"{pid} {name}" for pid, name in sorted(_descendants(os.getpid()).items())]

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        if op == "spawn":
            return {"pid": self.spawn(message["name"], message["argv"], message["env"], message["log"])}
        if op == "status":
            self.reap()
            return {"exited": self.exited}
        if op == "shutdown":
            return {"left": self.kill_all(float(message["grace"]))}
        return {"error": f"unknown op {op!r}"}


def main(directory: str) -> None:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # A Ctrl-C reaches the whole foreground process group: the test process tears down, not this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    supervisor = Supervisor()
    pending = b""
    while True:
        readable, _, _ = select.select([sys.stdin.fileno()], [], [], 0.1)
        supervisor.reap()
        if not readable:
            continue
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            message = json.loads(line)
            reply = supervisor.handle(message)
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
            if message["op"] == "shutdown":
                return
    supervisor.kill_all(grace=3.0)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
