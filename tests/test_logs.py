"""Importing the package leaves logging alone; the `lab` command quiets qemu.qmp and paramiko, and `-v`
shows the lab's own debug traces."""

from __future__ import annotations

import subprocess
import sys


def _levels(code: str) -> str:
    probe = ("import logging, lab.machine.channels.qmp, lab.machine.channels.ssh, lab.hosts.ssh\n" + code +
             "\nprint([logging.getLogger(n).getEffectiveLevel() for n in ('qemu.qmp', 'paramiko', 'lab.machine')])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_importing_the_channels_leaves_the_libraries_loggers_alone():
    assert _levels("") == "[30, 30, 30]"


def test_the_command_quiets_the_libraries_and_verbose_shows_the_lab_s_traces():
    assert _levels("from lab import logs; logs.configure(0)") == "[50, 50, 30]"
    assert _levels("from lab import logs; logs.configure(1)") == "[50, 50, 10]"
    assert _levels("from lab import logs; logs.configure(2)") == "[10, 10, 10]"


def test_verbose_is_an_option_of_the_command():
    from lab.cli import parser

    assert parser().parse_args(["-vv", "doctor"]).verbose == 2
    assert parser().parse_args(["doctor"]).verbose == 0
