"""The Slurm client commands the engine runs (sbatch, scontrol, scancel), each bounded, and how their
records read."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from lab.errors import LabError

COMMAND_SECONDS = 30.0
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s[A-Za-z][A-Za-z0-9_:/]*=|$)")


class SlurmCommandFailed(LabError):
    """A Slurm client command failed or did not answer; says which and what it printed."""


def parse_record(line: str) -> dict[str, str]:
    """One `scontrol -o show …` (or jobcomp/filetxt) line as a dict; values may hold spaces."""
    return dict(_FIELD.findall(line.strip()))


def task_ids(text: str) -> list[int]:
    """An ArrayTaskId: `4`, or the tasks of a pending record not split off yet: `0-3`, `1,3-5`, `2-7%2`."""
    ids: list[int] = []
    for part in text.split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            ids.extend(range(int(first), int(last or first) + 1))
    return ids


class SlurmClient:
    """The Slurm commands the engine runs, each bounded. They read SLURM_CONF, SBATCH_* and the rest of the
    standard Slurm environment themselves; each runs in its own session, so that a Ctrl-C at the terminal
    reaches the lab and not a scancel it is running."""

    def __init__(self, timeout: float = COMMAND_SECONDS) -> None:
        self.timeout = timeout

    def run(self, args: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(args, input=input, capture_output=True, text=True, timeout=self.timeout,
                                  start_new_session=True, check=False)
        except FileNotFoundError:
            raise SlurmCommandFailed(f"{args[0]} not found: install slurm-client (docs/slurm.md)") from None
        except subprocess.TimeoutExpired:
            raise SlurmCommandFailed(f"`{shlex.join(args[:4])}` did not answer within {self.timeout:g}s") from None

    def _checked(self, args: list[str], input: str | None = None) -> str:
        done = self.run(args, input)
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise SlurmCommandFailed(f"{args[0]} exited {done.returncode}: {said[-1] if said else 'no output'}")
        return done.stdout

    def submit(self, options: list[str], script: str) -> str:
        """sbatch with the script on stdin; the job id."""
        return self._checked(["sbatch", "--parsable", *options], script).strip().split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]] | None:
        """One record per array task (pending tasks may share one); None once slurmctld has forgotten the job."""
        done = self.run(["scontrol", "-o", "show", "job", job_id])
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return None
            raise SlurmCommandFailed(f"scontrol show job {job_id}: {done.stderr.strip() or 'no answer'}")
        return [parse_record(line) for line in done.stdout.splitlines() if line.strip()]

    def cancel(self, job_ids: list[str]) -> None:
        self._checked(["scancel", *job_ids])

    def jobcomp_log(self) -> Path | None:
        """The jobcomp/filetxt log, if the cluster keeps one this machine can read."""
        text = self._checked(["scontrol", "show", "config"])
        config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", text, re.MULTILINE))
        path = Path(config.get("JobCompLoc", ""))
        return path if config.get("JobCompType") == "jobcomp/filetxt" and path.is_file() else None
