"""reproduce.sh from a recorded run: valid bash, the run's exact QEMU commands, and refusal on changed inputs.

The script runs here only in its dry-run mode (it prints the commands), so no QEMU starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.report.reproduce import DRY_RUN_ENV, write_reproducer
from lab.rundir import RunDirectory

RECORDED_RUN = Path(__file__).parent / "data" / "run-no-stale-resume"
SWAP_SIZE = 512 << 20


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The recorded run with its kernel and initramfs moved to local stand-ins whose digests the result records."""
    run_dir = Path(shutil.copytree(RECORDED_RUN, tmp_path / "run"))
    with (run_dir / "swap.raw").open("wb") as swap:
        swap.truncate(SWAP_SIZE)
    image = tmp_path / "image"
    image.mkdir()
    result = json.loads((run_dir / "result.json").read_text())
    for name in ("vmlinuz", "initramfs.cpio"):
        (image / name).write_bytes(f"stand-in {name}".encode())
        result["environment"]["image"]["outputs"][name] = hashlib.sha256((image / name).read_bytes()).hexdigest()
    (run_dir / "result.json").write_text(json.dumps(result))
    original_image = result["environment"]["image"]["path"]
    for recorded in [*run_dir.glob("qemu-*.cmdline"), *run_dir.glob("machine-*.json")]:
        recorded.write_text(recorded.read_text().replace(original_image, str(image)))
    return run_dir


def _dry_run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, DRY_RUN_ENV: "1"})


def _expected_argv(recorded: list[str], work: str) -> list[str]:
    """What the replay must run: the recorded argv with its sockets and disk in the replay dir, -S dropped,
    and the console chardev swapped for the terminal."""
    expected = []
    args = iter(recorded)
    for arg in args:
        if arg == "-S":
            continue
        if arg == "-chardev" and "id=console," in (value := next(args)):
            continue
        if arg == "-chardev":
            expected += [arg, value]
            continue
        expected.append(arg)
    expected = ["mon:stdio" if arg == "chardev:console" else arg for arg in expected]
    expected = [re.sub(r"/tmp/lab-sock-[\w-]+", work, arg) for arg in expected]
    return [re.sub(r"filename=\S*/swap\.raw", f"filename={work}/swap.raw", arg) for arg in expected]


def test_script_is_executable_bash(run_dir: Path) -> None:
    script = write_reproducer(RunDirectory(run_dir))
    assert script == run_dir / "reproduce.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "lab scenario /work/main/scenarios/no-stale-resume.yaml --image " in text
    assert "/tmp/lab-sock-" not in text.split("set -euo pipefail")[1]


def test_dry_run_prints_each_boot_with_sockets_moved_and_running_guest(run_dir: Path) -> None:
    done = _dry_run(write_reproducer(RunDirectory(run_dir)))
    assert done.returncode == 0, done.stderr
    work = re.search(r"replaying in (\S+)", done.stderr).group(1)
    commands = [shlex.split(line) for line in done.stdout.splitlines()]
    assert commands[0] == ["truncate", "-s", str(SWAP_SIZE), f"{work}/swap.raw"]
    recorded = [shlex.split((run_dir / f"qemu-boot{n}.cmdline").read_text()) for n in (1, 2, 3)]
    assert commands[1:] == [_expected_argv(argv, work) for argv in recorded]
    assert all("-S" not in command for command in commands[1:])
    assert not Path(work).exists(), "the dry run leaves no replay directory behind"


def test_paused_keeps_the_guest_stopped(run_dir: Path) -> None:
    done = _dry_run(write_reproducer(RunDirectory(run_dir)), "--paused")
    assert done.returncode == 0, done.stderr
    qemu_commands = [shlex.split(line) for line in done.stdout.splitlines()][1:]
    assert len(qemu_commands) == 3
    assert all(command.count("-S") == 1 for command in qemu_commands)


def test_refuses_a_changed_kernel(run_dir: Path) -> None:
    script = write_reproducer(RunDirectory(run_dir))
    kernel = Path(re.search(r"-kernel (\S+)", (run_dir / "qemu-boot1.cmdline").read_text()).group(1))
    kernel.write_bytes(b"a different kernel")
    done = _dry_run(script)
    assert done.returncode == 1
    assert f"{kernel} changed since the run" in done.stderr
    assert "refusing to replay" in done.stderr
    assert done.stdout == "", "nothing may be run on changed inputs"


def test_refuses_a_missing_initramfs(run_dir: Path) -> None:
    script = write_reproducer(RunDirectory(run_dir))
    initrd = Path(re.search(r"-initrd (\S+)", (run_dir / "qemu-boot1.cmdline").read_text()).group(1))
    initrd.unlink()
    done = _dry_run(script)
    assert done.returncode == 1
    assert f"{initrd} is missing" in done.stderr


@pytest.mark.needs_shellcheck
def test_shellcheck_finds_nothing(run_dir: Path) -> None:
    script = write_reproducer(RunDirectory(run_dir))
    done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
