"""`reproduce.sh`: a run's QEMU invocations as a shell script anyone can replay by hand.

The script replays QEMU exactly as the lab launched it, on the same kernel and initramfs
(checked by sha256) and on a blank swap disk like the one the run started with; what it
cannot replay (the lab's typed commands, the PSCI layer's gdbstub answers) it says so.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import SetupError

SOCKET_DIR = re.compile(r"[^,=:\s]*/lab-sock-\w+")
"""The private socket directory `Machine` makes with mkdtemp, wherever the temp dir was."""
WORK = "\0"
"""Stands for the replay's temporary directory until the word is quoted for the shell."""
DRY_RUN_ENV = "LAB_REPRODUCE_DRY_RUN"


@dataclass(frozen=True)
class Boot:
    """One recorded QEMU launch and what the lab did with it."""

    name: str
    argv: list[str]
    steps: list[str]
    ending: str


def _boot_number(path: Path) -> int:
    digits = re.search(r"(\d+)$", path.stem)
    return int(digits.group(1)) if digits else 0


def _steps_per_boot(run_dir: Path) -> dict[str, list[str]]:
    """Steps the lab ran from each QEMU launch until the next one (the boot step itself included)."""
    groups: dict[str, list[str]] = {"": []}
    current: list[str] = groups[""]
    open_step: str | None = None
    events = run_dir / "events.jsonl"
    lines = events.read_text().splitlines() if events.exists() else []
    for record in map(json.loads, lines):
        if record["kind"] == "step-start":
            open_step = record.get("params", {}).get("params") or record["step"]
            current.append(open_step)
        elif record["kind"] == "step-end":
            open_step = None
        elif record["kind"] == "qemu-launched":
            launching = [current.pop()] if open_step is not None and current and current[-1] == open_step else []
            current = groups.setdefault(record["boot"], launching)
    return groups


def _ending(run_dir: Path, name: str) -> str:
    try:
        record = json.loads((run_dir / f"boot-{name}.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    if record.get("killed_by_lab"):
        return "was stopped by the lab"
    return f"exited with status {record.get('exit_code', 'unknown')}"


def _boots(run_dir: Path) -> list[Boot]:
    steps = _steps_per_boot(run_dir)
    boots = []
    for cmdline in sorted(run_dir.glob("qemu-*.cmdline"), key=_boot_number):
        name = cmdline.stem.removeprefix("qemu-")
        boots.append(Boot(name, shlex.split(cmdline.read_text()), steps.get(name, []), _ending(run_dir, name)))
    return boots


def _option_values(argv: list[str], option: str) -> list[str]:
    return [value for flag, value in itertools.pairwise(argv) if flag == option]


def _disk_paths(argv: list[str]) -> list[str]:
    paths = []
    for value in _option_values(argv, "-blockdev"):
        fields = dict(field.split("=", 1) for field in value.split(",") if "=" in field)
        if fields.get("driver") == "file" and "filename" in fields:
            paths.append(fields["filename"])
    return paths


def _disk_size(run_dir: Path, recorded: str, image_dir: str | None) -> int:
    """The run's disk keeps its size whatever the lab wrote into it (also where the run first had it);
    the image's blank template has that size too."""
    name = Path(recorded).name
    candidates = [run_dir / name, Path(recorded), *([Path(image_dir) / name] if image_dir else [])]
    for candidate in candidates:
        if candidate.exists():
            return candidate.stat().st_size
    raise SetupError(f"cannot tell the size of disk {name}: none of {', '.join(map(str, candidates))} exists")


def _shell_word(arg: str, disks: dict[str, str]) -> str:
    """Quote one argument for bash, with the socket directory and the disks moved into "$work"."""
    moved = SOCKET_DIR.sub(WORK, arg)
    for recorded, name in disks.items():
        moved = moved.replace(recorded, f"{WORK}/{name}")
    return '"$work"'.join(shlex.quote(piece) if piece else "" for piece in moved.split(WORK))


def _replay_words(argv: list[str], disks: dict[str, str]) -> list[str]:
    """The argv as bash words: `-S` becomes optional, the serial console moves to the terminal."""
    serial_ids = {value.removeprefix("chardev:") for value in _option_values(argv, "-serial")}
    words: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "-S":
            words.append('"${pause[@]}"')
        elif arg == "-chardev":
            value = next(args)
            if not serial_ids.intersection(field.removeprefix("id=") for field in value.split(",")[1:]):
                words += ["-chardev", _shell_word(value, disks)]
        elif arg == "-serial":
            next(args)
            words += ["-serial", "mon:stdio"]
        else:
            words.append(_shell_word(arg, disks))
    return words


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
        words += ["--qemu", boots[0].argv[0]]
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
#     also holds the swap disk and is kept afterwards for inspection (lab image inspect DIR/swap.raw);
#   - `-S` is dropped so the guest runs at once; pass --paused to keep it (then `cont` on the monitor);
#   - the serial console is this terminal (-serial mon:stdio) instead of a socket and a console log:
#     Ctrl-A c switches between console and QEMU monitor, Ctrl-A x quits QEMU and moves to the next boot.
# Not replayed: what the lab typed on the console (listed per boot below; type it yourself), disk
# edits the lab made between boots, and the PSCI layer's answers through the gdbstub: plain QEMU
# answers PSCI itself (v1.1, no SYSTEM_OFF2 on TCG), so a guest may power off differently than in
# the run. To run the whole scenario again with the lab, judged, in a new run directory:
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


def _script(run_dir: Path, result: dict[str, Any], boots: list[Boot]) -> str:
    environment = result.get("environment", {})
    image = environment.get("image", {})
    verdict = result.get("verdict", {})
    described = {
        "run": str(run_dir.resolve()), "scenario": result.get("scenario", {}).get("name", "unknown"),
        "image": f"{image.get('name', 'unknown')} ({image.get('kernel_release', 'unknown release')})",
        "accel": environment.get("accel", "unknown"), "psci": environment.get("psci_personality") or "none",
        "verdict": f"{verdict.get('status', 'unknown')}: {verdict.get('reason', 'no result.json')}",
        "rerun": _rerun_command(result, boots),
    }
    lines = [HEADER.format(dry_run=DRY_RUN_ENV, **{key: _one_line(value) for key, value in described.items()})]
    outputs = image.get("outputs", {})
    inputs = dict.fromkeys(path for boot in boots for option in ("-kernel", "-initrd")
                           for path in _option_values(boot.argv, option))
    lines += [f"check_input {shlex.quote(path)} {shlex.quote(outputs.get(Path(path).name, ''))}" for path in inputs]
    disks = {path: Path(path).name for boot in boots for path in _disk_paths(boot.argv)}
    lines += ['', 'work=$(mktemp -d "${TMPDIR:-/tmp}/lab-reproduce.XXXXXX")',
              f'if [[ "${{{DRY_RUN_ENV}:-0}}" == 1 ]]; then trap \'rm -rf "$work"\' EXIT; fi',
              'echo "reproduce.sh: replaying in $work (QMP socket: $work/qmp.sock)" >&2']
    for recorded, name in disks.items():
        size = _disk_size(run_dir, recorded, image.get("path"))
        lines.append(f'run truncate -s {size} "$work"/{shlex.quote(name)}')
    if not boots:
        lines.append('echo "reproduce.sh: the run launched no QEMU; nothing to replay" >&2')
    for boot in boots:
        steps = _one_line("; ".join(boot.steps) or "nothing")
        lines += ["", f"# {boot.name}: in the run, the lab then ran: {steps}", f"# and QEMU {boot.ending}.",
                  "printf '%s\\n' " + shlex.quote(f"reproduce.sh: {boot.name} (the lab ran: {steps})") + " >&2",
                  "run " + " \\\n    ".join(_option_lines(_replay_words(boot.argv, disks)))]
    return "\n".join(lines) + "\n"


def write_reproducer(run_dir: Path) -> Path:
    """Write an executable `reproduce.sh` into the run directory that replays the run's QEMU boots."""
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    path = run_dir / "reproduce.sh"
    path.write_text(_script(run_dir, result, _boots(run_dir)))
    path.chmod(0o755)
    return path
