"""How the `lab` command logs: the lab's own debug traces (`lab -v`), and the libraries kept quiet.

qemu.qmp and paramiko log the lab's deliberate disconnects (QEMU quitting, a guest hibernating under an
SSH session) as errors. The package leaves logging to whoever runs it; the command and the processes
it spawns configure it here, and `-vv` lets those libraries speak too.
"""

from __future__ import annotations

import logging

CHATTY_LIBRARIES = ("qemu.qmp", "paramiko")


def configure(verbosity: int = 0) -> None:
    """0: warnings from the lab only; 1: the lab's debug traces; 2: the libraries' debug logs too."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("lab").setLevel(logging.DEBUG if verbosity >= 1 else logging.WARNING)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 2 else logging.CRITICAL)
