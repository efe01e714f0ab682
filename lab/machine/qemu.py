"""QEMU builds: which binary a run uses and what it says about itself."""

from __future__ import annotations

import subprocess

VERSION_TIMEOUT = 10.0


def qemu_version(binary: str) -> str:
    """The first line of `BINARY --version`, or `unknown` when it cannot be run."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.splitlines()[0] if done.stdout else "unknown"
