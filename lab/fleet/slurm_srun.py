"""One scenario on a Slurm node with its output live here: `lab scenario NAME --engine slurm`, through srun."""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys

from lab.errors import SetupError
from lab.fleet.slurm import STOP_GRACE_SECONDS
from lab.fleet.slurm_settings import LAB_COMMAND, SlurmSettings, host_class_name, resources
from lab.scenario.model import Scenario


def srun_scenario(argv: list[str], scenario: Scenario, arch: str, accel: str | None, settings: SlurmSettings) -> int:
    """Run `lab scenario` with these arguments on a node of the scenario's host class, its output live here and
    its exit status passed through; an interrupt cancels the step (its run still cleans up on the node)."""
    host = settings.host_class(host_class_name(accel, arch))
    command = ["srun", f"--job-name=lab-{scenario.name}", *host.options(), *resources([scenario]),
               f"--immediate={math.ceil(settings.start_timeout)}", "--quit-on-interrupt",
               *LAB_COMMAND, *argv, "--engine", "local"]
    print(f"lab: on Slurm: {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        srun = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except FileNotFoundError:
        raise SetupError("srun not found: install slurm-client (docs/slurm.md)") from None
    try:
        code = srun.wait()
    except KeyboardInterrupt:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        srun.send_signal(signal.SIGINT)
        try:
            srun.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            srun.kill()
            srun.wait()
        raise
    return code if code >= 0 else 128 - code
