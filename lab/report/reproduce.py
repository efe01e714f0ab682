"""`reproduce.sh`: a run's QEMU invocations as a shell script anyone can replay by hand.

Each boot's command is rebuilt from the machine spec the lab launched it from
(`machine-NAME.json`), with its sockets and swap disk moved into a fresh directory and the
serial console on the terminal. It runs the same kernel and initramfs (checked by sha256) on a
blank swap disk like the one the run started with; what it cannot replay (the lab's typed
commands, the PSCI layer's gdbstub answers) it says so.
"""

from __future__ import annotations

import dataclasses
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import SetupError
from lab.events import QemuLaunched, StepEnded, StepStarted
from lab.machine.spec import Disk, MachineSpec, unix_channels
from lab.rundir import BootFiles, RunDirectory

WORK = Path("/\0work")
"""Stands for the replay's temporary directory until the words are quoted for the shell."""
DRY_RUN_ENV = "LAB_REPRODUCE_DRY_RUN"
PSCI_NOTES = {
    True: "Nor are the PSCI layer's answers through the gdbstub: QEMU answers PSCI itself here (v1.1 in a "
          "stock build, no SYSTEM_OFF2 on TCG), so a guest may power off differently than in the run.",
    False: "QEMU's own PSCI answers in the replay as it did in the run, so a guest powers off the same way: "
           "a build with the lab's SYSTEM_OFF2 series reports OFF2 again (SUSPEND_DISK, then SHUTDOWN).",
}


@dataclass(frozen=True)
class Boot:
    """One recorded QEMU launch and what the lab did with it."""

    name: str
    spec: MachineSpec
    steps: list[str]
    ending: str


def _steps_per_boot(run_dir: RunDirectory) -> dict[str, list[str]]:
    """Steps the lab ran from each QEMU launch until the next one (the boot step itself included)."""
    groups: dict[str, list[str]] = {"": []}
    current: list[str] = groups[""]
    open_step: str | None = None
    for event in run_dir.read_events():
        if isinstance(event, StepStarted):
            open_step = event.label
            current.append(open_step)
        elif isinstance(event, StepEnded):
            open_step = None
        elif isinstance(event, QemuLaunched):
            launching = [current.pop()] if open_step is not None and current and current[-1] == open_step else []
            current = groups.setdefault(event.boot, launching)
    return groups


def _ending(files: BootFiles) -> str:
    record = files.read_record()
    if record is None:
        return "unknown"
    if record.get("killed_by_lab"):
        return "was stopped by the lab"
    return f"exited with status {record.get('exit_code', 'unknown')}"


def _boots(run_dir: RunDirectory) -> list[Boot]:
    steps = _steps_per_boot(run_dir)
    boots = []
    for files in run_dir.boots():
        saved = files.read_machine()
        if saved is not None:
            boots.append(Boot(files.name, MachineSpec.from_json(saved), steps.get(files.name, []), _ending(files)))
    return boots


def _disk_size(run_dir: RunDirectory, disk: Disk, image_dir: str | None) -> int:
    """The run's disk keeps its size whatever the lab wrote into it (also where the run first had it);
    the image's blank template has that size too."""
    name = disk.path.name
    candidates = [run_dir.path / name, disk.path, *([Path(image_dir) / name] if image_dir else [])]
    for candidate in candidates:
        if candidate.exists():
            return candidate.stat().st_size
    raise SetupError(f"cannot tell the size of disk {name}: none of {', '.join(map(str, candidates))} exists")


def _replay_spec(spec: MachineSpec) -> MachineSpec:
    """The spec with its disks moved into the replay directory."""
    return dataclasses.replace(spec, disks=tuple(Disk(WORK / d.path.name, d.format) for d in spec.disks))


def _shell_word(arg: str) -> str:
    """Quote one argument for bash, with the replay directory as "$work"."""
    return '"$work"'.join(shlex.quote(piece) if piece else "" for piece in arg.split(str(WORK)))


def _replay_words(spec: MachineSpec) -> list[str]:
    """The replay's argv as bash words: the serial console on the terminal, `-S` only with --paused."""
    argv = _replay_spec(spec).command(unix_channels(WORK), console_log=None, paused=False)
    return [_shell_word(argv[0]), '"${pause[@]}"', *(_shell_word(arg) for arg in argv[1:])]


def _option_lines(words: list[str]) -> list[str]:
    """One option and its value per line, so the command reads like QEMU's documentation."""
    lines: list[str] = []
    for word in words:
        if lines and not word.startswith(("-", '"${pause')):
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def _rerun_command(result: dict[str, Any], boots: list[Boot]) -> str:
    environment = result.get("environment", {})
    words = ["lab", "scenario", result.get("scenario", {}).get("path", "<scenario file>")]
    words += ["--image", environment.get("image", {}).get("path", "<image directory>")]
    if environment.get("accel"):
        words += ["--accel", environment["accel"]]
    if environment.get("psci_personality"):
        words += ["--psci", environment["psci_personality"]]
    if boots:
        words += ["--qemu", boots[0].spec.qemu_binary]
    return shlex.join(words)


HEADER = """\
#!/usr/bin/env bash
# Replays the QEMU invocations of lab run {run}
#   scenario {scenario}; image {image}; accel {accel}; PSCI layer personality {psci}
#   verdict: {verdict}
#
# Replayed exactly: every boot's QEMU binary and arguments, in the run's order, on the same
# kernel and initramfs (their sha256 is checked first against the image manifest recorded in
# result.json; the script refuses to run on changed files), and on a swap disk recreated blank
# and sparse at its original size, as the run started with it; the boots share that disk.
# Changed on purpose:
#   - the private socket directory (/tmp/lab-sock-*) becomes a fresh temporary directory, which
#     also holds the swap disk and is kept afterwards for inspection (lab disk inspect DIR/swap.raw);
#   - `-S` is dropped so the guest runs at once; pass --paused to keep it (then `cont` on the monitor);
#   - the console is this terminal (multiplexed with the monitor) instead of a socket and a console log:
#     Ctrl-A c switches between console and QEMU monitor, Ctrl-A x quits QEMU and moves to the next boot.
# Not replayed: what the lab typed on the console (listed per boot below; type it yourself) and
# disk edits the lab made between boots.
# {psci_note}
# To run the whole scenario again with the lab, judged, in a new run directory:
#   {rerun}
#
# Usage: reproduce.sh [--paused]    ({dry_run}=1 prints the commands instead of running them)
set -euo pipefail

pause=()
for arg in "$@"; do
    case "$arg" in
        --paused) pause=(-S) ;;
        *) echo "usage: $0 [--paused]" >&2; exit 2 ;;
    esac
done

run() {{
    if [[ "${{{dry_run}:-0}}" == 1 ]]; then
        printf '%q ' "$@"
        printf '\\n'
    else
        "$@"
    fi
}}

check_input() {{
    local path=$1 expected=$2 actual
    if [[ ! -f "$path" ]]; then
        echo "reproduce.sh: $path is missing: rebuild the image or rerun the scenario" >&2
        exit 1
    fi
    if [[ -z "$expected" ]]; then
        echo "reproduce.sh: no recorded sha256 for $path; using it unchecked" >&2
        return
    fi
    actual=$(sha256sum "$path")
    actual=${{actual%% *}}
    if [[ "$actual" != "$expected" ]]; then
        echo "reproduce.sh: $path changed since the run (sha256 $actual, the run used $expected)" >&2
        echo "reproduce.sh: refusing to replay on different inputs; rebuild the image or rerun the scenario" >&2
        exit 1
    fi
}}
"""


def _one_line(text: str) -> str:
    """Text for a comment line: a newline in an error message must not end the comment."""
    return " ".join(text.split())


def _script(run_dir: RunDirectory, result: dict[str, Any], boots: list[Boot]) -> str:
    environment = result.get("environment", {})
    image = environment.get("image", {})
    verdict = result.get("verdict", {})
    described = {
        "run": str(run_dir.path.resolve()), "scenario": result.get("scenario", {}).get("name", "unknown"),
        "image": f"{image.get('name', 'unknown')} ({image.get('kernel_release', 'unknown release')})",
        "accel": environment.get("accel", "unknown"), "psci": environment.get("psci_personality") or "none",
        "verdict": f"{verdict.get('status', 'unknown')}: {verdict.get('reason', 'no result.json')}",
        "rerun": _rerun_command(result, boots),
    }
    psci_note = "\n# ".join(textwrap.wrap(PSCI_NOTES[environment.get("psci_personality") is not None], 96))
    lines = [HEADER.format(dry_run=DRY_RUN_ENV, psci_note=psci_note,
                           **{key: _one_line(value) for key, value in described.items()})]
    outputs = image.get("outputs", {})
    inputs = dict.fromkeys(str(path) for boot in boots for path in (boot.spec.kernel, boot.spec.initrd) if path)
    lines += [f"check_input {shlex.quote(path)} {shlex.quote(outputs.get(Path(path).name, ''))}" for path in inputs]
    disks = {disk.path.name: disk for boot in boots for disk in boot.spec.disks}
    lines += ['', 'work=$(mktemp -d "${TMPDIR:-/tmp}/lab-reproduce.XXXXXX")',
              f'if [[ "${{{DRY_RUN_ENV}:-0}}" == 1 ]]; then trap \'rm -rf "$work"\' EXIT; fi',
              'echo "reproduce.sh: replaying in $work (QMP socket: $work/qmp.sock)" >&2']
    for name, disk in disks.items():
        size = _disk_size(run_dir, disk, image.get("path"))
        lines.append(f'run truncate -s {size} "$work"/{shlex.quote(name)}')
    if not boots:
        lines.append('echo "reproduce.sh: the run launched no QEMU; nothing to replay" >&2')
    for boot in boots:
        steps = _one_line("; ".join(boot.steps) or "nothing")
        lines += ["", f"# {boot.name}: in the run, the lab then ran: {steps}", f"# and QEMU {boot.ending}.",
                  "printf '%s\\n' " + shlex.quote(f"reproduce.sh: {boot.name} (the lab ran: {steps})") + " >&2",
                  "run " + " \\\n    ".join(_option_lines(_replay_words(boot.spec)))]
    return "\n".join(lines) + "\n"


def write_reproducer(run_dir: RunDirectory) -> Path:
    """Write an executable `reproduce.sh` into the run directory that replays the run's QEMU boots."""
    path = run_dir.reproducer
    path.write_text(_script(run_dir, run_dir.read_result() or {}, _boots(run_dir)))
    path.chmod(0o755)
    return path
