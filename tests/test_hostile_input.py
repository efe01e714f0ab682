"""Hostile input: every case is one line on stderr and exit 2, writes nothing anywhere, and touches nothing.

Each case runs the `lab` command's own entry point in a sandbox that holds the working directory, the runs
directory's parent, the lab cache, the temporary directory and the files the case points at; the whole
sandbox (paths, sizes, mtimes, sha256) must be the same afterwards. Cases that would hang or eat the host's
memory if they regressed (alias bombs, /dev/zero) run `lab` in a process of its own, bounded in time and
memory. A guest's console is fed bytes that are not UTF-8 through a real unix socket; a disk held by a paused
QEMU is refused by `lab disk set-signature`.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lab
from lab.cli import main
from lab.disk.lock import DiskLock, is_held
from lab.errors import UsageError, WaitTimeout
from lab.fleet.matrix import MAX_DIR_NAME, Cell
from lab.image.recipe import ImageRecipe
from lab.judge.observations import Observations, PowerOffObservation
from lab.judge.verdict import judge
from lab.machine.channels.serial import SerialConsole
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec
from lab.paths import IMAGES_DIR, SCENARIOS_DIR
from lab.report.html import write_html_report
from lab.report.junit import write_junit
from lab.report.result import write_result
from lab.rundir import BootRecord, RunDirectory, read_console_file, unique_dir
from lab.scenario.model import find_scenario
from lab.vocabulary import Intent
from lab.yaml_file import MAX_BYTES
from tests.disk.test_header import hibernate_into, make_swap_area

LAB_ROOT = Path(lab.__file__).resolve().parents[1]

CASE_SECONDS = 60
CASE_BYTES = 2 << 30
"""Bounds of an isolated case: one that regresses (an alias bomb expanded, /dev/zero copied) fails, not the host."""
SCENARIO = "description: hostile\nsteps:\n  - boot: {expect: fresh}\n  - poweroff: {expect: poweroff}\n"
MATRIX = "kernels: [default]\nscenarios: [poweroff-baseline]\n"
BOMB = "\n".join(
    ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]" for level in range(1, 10)]
) + "\n"
"""Billion laughs: ten lines that expand to 9**10 strings for whatever walks the data."""


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str


@dataclass
class Sandbox:
    """Everything a case could write to, under one directory."""

    root: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def files(self) -> Path:
        return self.root / "files"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.files / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def snapshot(self, skip: Path | None = None) -> dict[str, tuple[int, int, int, str]]:
        """Every path under the sandbox: its mode, size, mtime and (for regular files) sha256."""
        seen = {}
        for directory, names, files in os.walk(self.root):
            for name in names + files:
                path = Path(directory, name)
                if skip is not None and path.is_relative_to(skip):
                    continue
                info = path.lstat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else ""
                seen[str(path.relative_to(self.root))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
        return seen

    def lab(self, *args: str | Path, isolated: bool = False) -> Outcome:
        """`lab ARGS` through its entry point in the sandbox's working directory; `isolated`: in a process of
        its own, bounded in time and memory."""
        argv = [str(arg) for arg in args]
        if isolated:
            done = subprocess.run([sys.executable, "-m", "lab.cli", *argv], cwd=self.cwd, capture_output=True,
                                  text=True, timeout=CASE_SECONDS, preexec_fn=_bounded_memory, env=_lab_env())
            return Outcome(done.returncode, done.stdout, done.stderr)
        self.capsys.readouterr()
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 2
        captured = self.capsys.readouterr()
        return Outcome(status, captured.out, captured.err)

    def refuses(self, *args: str | Path, says: str, isolated: bool = False) -> str:
        """Run a case that must be refused; returns its one line."""
        before = self.snapshot()
        outcome = self.lab(*args, isolated=isolated)
        assert outcome.status == 2, outcome
        lines = outcome.stderr.splitlines()
        assert len(lines) == 1, outcome.stderr
        assert "Traceback" not in outcome.stderr
        assert lines[0].startswith("lab"), lines[0]
        assert says in lines[0], lines[0]
        assert lines[0].isprintable(), lines[0]
        assert self.snapshot() == before, "the case wrote or changed something"
        assert not Path("/dev/null.lab-lock").exists()
        return lines[0]


def _lab_env() -> dict[str, str]:
    """The environment with this checkout's `lab` first on the path: the virtualenv may hold another's."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(LAB_ROOT), *([path] if path else [])])}


def _bounded_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CASE_BYTES, CASE_BYTES))


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path / "sandbox", capsys)
    for directory in (box.cwd, box.files, box.root / "cache", box.root / "tmp"):
        directory.mkdir(parents=True)
    monkeypatch.chdir(box.cwd)
    monkeypatch.setenv("LAB_CACHE_DIR", str(box.root / "cache"))
    monkeypatch.setenv("LAB_CONFIG", str(box.root / "no-config.yaml"))
    monkeypatch.setenv("TMPDIR", str(box.root / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(box.root / "tmp"))
    sigterm = signal.getsignal(signal.SIGTERM)
    yield box
    signal.signal(signal.SIGTERM, sigterm)


def _scenario(box: Sandbox, body: str, name: str = "hostile.yaml") -> list[str | Path]:
    return ["scenario", box.write(name, body), "--runs-dir", box.runs]


def _matrix(box: Sandbox, body: str, name: str = "hostile.yaml") -> list[str | Path]:
    return ["run", "--matrix", box.write(name, body), "--runs-dir", box.runs]


# --- names: nothing a file names may escape the runs directory ------------------------------------------------

NAME_CASES = {
    "dot-dot": ("name: ../../escape\n", "'../../escape' is not a name of lower-case letters"),
    "slash": ("name: a/b\n", "'a/b' is not a name"),
    "nul": ('name: "a\\0b"\n', "'a\\x00b' is not a name"),
    "trailing newline": ('name: "abc\\n"\n', "'abc\\n' is not a name"),
    "absurd length": (f"name: {'a' * 300}\n", "is too long"),
}


@pytest.mark.parametrize(("head", "says"), NAME_CASES.values(), ids=NAME_CASES.keys())
def test_scenario_names_cannot_escape_the_runs_directory(sandbox: Sandbox, head: str, says: str) -> None:
    line = sandbox.refuses(*_scenario(sandbox, head + SCENARIO), says=says)
    assert ":1: name: " in line


MATRIX_CASES = {
    "dot-dot name": (f"name: ../x\n{MATRIX}", ":1: name: '../x' is not a name"),
    "newline name": (f'name: "x\\n"\n{MATRIX}', ":1: name: 'x\\n' is not a name"),
    "kernel with a path": ("kernels: [linux-image-../../x=1]\nscenarios: [poweroff-baseline]\n",
                           "kernels/0: 'linux-image-../../x=1' is neither `default` nor a Debian kernel"),
    "qemu with a nul": (f'{MATRIX}qemus: ["/x\\0y"]\n', "qemus/0: '/x\\x00y' is neither a QEMU build's name"),
    "host with a nul": (f'{MATRIX}hosts: ["ssh://root@h\\0x"]\n', "hosts/0: 'ssh://root@h\\x00x' is neither `local`"),
    "host kernel with a path": (f"{MATRIX}hosts: [kvm-host:linux-image-a=../../x]\n",
                                "hosts/0: 'kvm-host:linux-image-a=../../x' is neither `local`"),
    "scenario with a nul": ('kernels: [default]\nscenarios: ["a\\0b"]\n', "scenarios/0: no scenario named 'a\\x00b'"),
}


@pytest.mark.parametrize(("body", "says"), MATRIX_CASES.values(), ids=MATRIX_CASES.keys())
def test_matrix_names_cannot_escape_the_runs_directory(sandbox: Sandbox, body: str, says: str) -> None:
    sandbox.refuses(*_matrix(sandbox, body), says=says)


def test_a_matrix_named_by_a_file_name_that_is_no_name_must_say_its_name(sandbox: Sandbox) -> None:
    sandbox.refuses(*_matrix(sandbox, MATRIX, name="My $(matrix).yaml"),
                    says="the file's name 'My $(matrix)' cannot name the matrix directory")
    sandbox.refuses(*_matrix(sandbox, MATRIX, name=f"m{'x' * 80}.yaml"), says="give the matrix a `name`")


@pytest.mark.parametrize("stem", ["", ".", "..", "../escape", "a/b", "a\0b", "x" * 201])
def test_no_run_directory_is_made_from_a_stem_that_is_not_one_plain_file_name(tmp_path: Path, stem: str) -> None:
    """The last word, should a name ever reach a run directory without its schema: nothing is created."""
    with pytest.raises(UsageError, match="cannot name a directory under"):
        unique_dir(tmp_path / "runs", stem)
    assert list(tmp_path.iterdir()) == []


def test_cell_directory_names_stay_short_and_apart_whatever_the_qemu_path() -> None:
    scenario = find_scenario("poweroff-baseline")
    long_paths = [f"/opt/{'q' * 300}/{build}/qemu-system-aarch64" for build in ("a", "b")]
    names = [Cell(scenario, qemu=path).dir_name for path in long_paths]
    assert all(len(name) <= MAX_DIR_NAME and "/" not in name for name in names)
    assert names[0] != names[1]
    assert Cell(scenario, qemu="patched").dir_name == "poweroff-baseline.kernel=default.qemu=patched"


# --- YAML that would exhaust the host -----------------------------------------------------------------------

YAML_CASES = {
    "billion laughs": (f"name: bomb\n{BOMB}{SCENARIO}", ":2: YAML anchors (&l0) are not allowed in scenario files"),
    "recursive alias": ("name: loop\ndescription: x\nsteps: &s [{repeat: {times: 1, steps: *s}}]\n",
                        ":3: YAML anchors (&s) are not allowed"),
    "alias only": ("name: a\ndescription: x\nsteps: [mark]\nimage: *nowhere\n", ":4: YAML aliases (*nowhere)"),
    "merge key": ("name: a\ndescription: x\nsteps:\n  - boot: {<<: *b}\n", ":4: YAML aliases (*b) are not allowed"),
    "deep nesting": (f"name: deep\ndescription: x\nsteps: {'[' * 100_000}{']' * 100_000}\n",
                     ":3: nesting deeper than 64 levels is not allowed in scenario files"),
    "too big": (f"name: big\ndescription: {'x' * MAX_BYTES}\nsteps: [mark]\n",
                "more than 1024 KiB, refused: scenario files are far smaller"),
    "not UTF-8": (b"name: big\ndescription: x\n\xff\xfe: 1\n", ":3: not UTF-8 text (byte 0xff)"),
    "raw escape character": ("name: a\ndescription: \x1b[2J\nsteps: [mark]\n",
                             ":2: not valid YAML: character #x001b: special characters are not allowed"),
}


@pytest.mark.parametrize(("body", "says"), YAML_CASES.values(), ids=YAML_CASES.keys())
def test_yaml_that_would_exhaust_the_host_is_refused_before_it_is_built(
        sandbox: Sandbox, body: str | bytes, says: str) -> None:
    path = sandbox.write("hostile.yaml", body)
    sandbox.refuses("scenario", path, "--runs-dir", sandbox.runs, says=f"{path}{says}" if says[0] == ":" else says,
                    isolated=True)


def test_matrix_and_lab_config_refuse_aliases_too(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.refuses(*_matrix(sandbox, MATRIX + BOMB), says=":3: YAML anchors (&l0) are not allowed in matrix files",
                    isolated=True)
    config = sandbox.write("config.yaml", "slurm: &s {start_timeout: 5}\n")
    monkeypatch.setenv("LAB_CONFIG", str(config))
    sandbox.refuses(*_matrix(sandbox, MATRIX), "--engine", "slurm",
                    says=f"{config}:1: YAML anchors (&s) are not allowed in lab config files", isolated=True)


def test_image_recipes_refuse_aliases_and_name_the_line_of_a_bad_field(tmp_path: Path) -> None:
    shipped = (IMAGES_DIR / "debian-arm64.yaml").read_text()
    aliased = tmp_path / "aliased.yaml"
    aliased.write_text(shipped.replace("modules: [virtio_blk, virtio_net]", "modules: &m [virtio_blk]\nx: *m"))
    with pytest.raises(UsageError, match=r"aliased\.yaml:\d+: YAML anchors \(&m\) are not allowed in image recipe"):
        ImageRecipe.load(aliased)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(shipped + "swap_size_gib: 1\n")
    with pytest.raises(UsageError, match=r"unknown\.yaml:13: swap_size_gib: Additional properties are not allowed"):
        ImageRecipe.load(unknown)
    huge = tmp_path / "huge.yaml"
    huge.write_text(shipped.replace("swap_size_mib: 512", "swap_size_mib: 1e6"))
    with pytest.raises(UsageError, match="swap_size_mib: '1e6' is not of type 'integer'"):
        ImageRecipe.load(huge)


# --- absurd numbers ----------------------------------------------------------------------------------------

NUMBER_CASES = {
    "infinite timeout": ("steps:\n  - boot: {timeout: .inf}\n", "steps/0/boot/timeout: inf is not of type 'number'"),
    "overflowing timeout": ("steps:\n  - boot: {timeout: 1.0e+999}\n", "inf is not of type 'number'"),
    "nan timeout": ("steps:\n  - boot: {timeout: .nan}\n", "steps/0/boot/timeout: nan is not of type 'number'"),
    "boolean timeout": ("steps:\n  - boot: {timeout: true}\n", "True is not of type 'number'"),
    "hour-long-plus timeout": ("steps:\n  - boot: {timeout: 3601}\n", "3601 is greater than the maximum of 3600"),
    "boolean times": ("steps:\n  - repeat: {times: true, steps: [mark]}\n", "True is not of type 'integer'"),
    "fractional times": ("steps:\n  - repeat: {times: 3.0, steps: [mark]}\n", "3.0 is not of type 'integer'"),
    "huge times": ("steps:\n  - repeat: {times: 99999999999999999999999, steps: [mark]}\n",
                   "99999999999999999999999 is greater than the maximum of 100"),
    "nested repeats": ("steps:\n  - repeat: {times: 100, steps: [{repeat: {times: 100, steps: [mark]}}]}\n",
                       "steps: the repeats add up to 10000 steps; a run takes at most 1000"),
    "huge memory": ("memory_mib: 99999999999999999999\nsteps: [mark]\n", "is greater than the maximum of 65536"),
    "fractional memory": ("memory_mib: 1024.0\nsteps: [mark]\n", "memory_mib: 1024.0 is not of type 'integer'"),
    "boolean cpus": ("cpus: true\nsteps: [mark]\n", "cpus: True is not of type 'integer'"),
    "exit status beyond a byte": ("steps:\n  - run: {command: 'true', expect_status: 256}\n",
                                  "expect_status: 256 is greater than the maximum of 255"),
}


@pytest.mark.parametrize(("body", "says"), NUMBER_CASES.values(), ids=NUMBER_CASES.keys())
def test_absurd_numbers_in_a_scenario_are_refused(sandbox: Sandbox, body: str, says: str) -> None:
    sandbox.refuses(*_scenario(sandbox, f"name: numbers\ndescription: x\n{body}"), says=says)


@pytest.mark.parametrize(("body", "says"), [
    (f"{MATRIX}workers: true\n", "workers: True is not of type 'integer'"),
    (f"{MATRIX}workers: 2.0\n", "workers: 2.0 is not of type 'integer'"),
    (f"{MATRIX}workers: 65\n", "workers: 65 is greater than the maximum of 64"),
    (f"{MATRIX}slurm: {{start_timeout: .nan}}\n", "slurm/start_timeout: nan is not of type 'number'"),
], ids=["boolean workers", "fractional workers", "too many workers", "nan start timeout"])
def test_absurd_numbers_in_a_matrix_are_refused(sandbox: Sandbox, body: str, says: str) -> None:
    sandbox.refuses(*_matrix(sandbox, body), says=says)


@pytest.mark.parametrize(("args", "says"), [
    (["--workers", "0"], "argument --workers: wants a whole number from 1 to 64, got '0'"),
    (["--workers", "²"], "got '²'"),
    (["--workers", "1" + "0" * 12], "from 1 to 64"),
    (["--workers", "-1"], "from 1 to 64"),
], ids=["zero", "superscript two", "a trillion", "negative"])
def test_absurd_worker_counts_are_one_line(sandbox: Sandbox, args: list[str], says: str) -> None:
    sandbox.refuses(*_matrix(sandbox, MATRIX), *args, says=says)


@pytest.mark.parametrize("jobs", ["0", "257", "9" * 30, "1.5"])
def test_absurd_compile_job_counts_are_one_line(sandbox: Sandbox, jobs: str) -> None:
    sandbox.refuses("qemu", "build", "--jobs", jobs, says="argument --jobs: wants a whole number from 1 to 256")


@pytest.mark.parametrize(("args", "says"), [
    (["--cpus", "0"], "argument --cpus: wants a whole number from 1 to 64, got '0'"),
    (["--cpus", "65"], "argument --cpus: wants a whole number from 1 to 64"),
    (["--memory", "9" * 20], "argument --memory: wants a whole number from 1 to 1048576"),
], ids=["no cpus", "too many cpus", "absurd memory"])
def test_absurd_lab_host_sizes_are_one_line(sandbox: Sandbox, args: list[str], says: str) -> None:
    sandbox.refuses("host", "start", *args, says=says)


# --- unknown keys, at every level ------------------------------------------------------------------------------

UNKNOWN_KEYS = {
    "top level": ("name: u\ndescription: x\nsteps: [mark]\nbogus: 1\n", ":4: bogus: Additional properties"),
    "step parameter": ("name: u\ndescription: x\nsteps:\n  - boot: {expect: fresh, bogus: 1}\n",
                       ":4: steps/0/boot/bogus: Additional properties"),
    "step inside a repeat": ("name: u\ndescription: x\nsteps:\n  - repeat:\n      times: 2\n      steps:\n"
                             "        - hibernate: {bogus: 1}\n", ":7: steps/0/repeat/steps/0/hibernate/bogus:"),
    "step kind": ("name: u\ndescription: x\nsteps:\n  - frobnicate\n", ":4: steps/0/frobnicate: Additional"),
    "key that is a number": ("name: u\ndescription: x\nsteps: [mark]\n1: one\n", "1: Additional properties"),
    "key with terminal escapes": ('name: u\ndescription: x\nsteps: [mark]\n"\\e]0;pwned\\a": 1\n',
                                  ":4: ␛]0;pwned␇: Additional properties"),
    "key with a newline": ('name: u\ndescription: x\nsteps: [mark]\n"a\\nb": 1\n', ":4: a␊b: Additional properties"),
}


@pytest.mark.parametrize(("body", "says"), UNKNOWN_KEYS.values(), ids=UNKNOWN_KEYS.keys())
def test_unknown_keys_in_a_scenario_name_file_line_and_field(sandbox: Sandbox, body: str, says: str) -> None:
    sandbox.refuses(*_scenario(sandbox, body), says=says)


@pytest.mark.parametrize(("body", "says"), [
    (f"{MATRIX}bogus: 1\n", ":3: bogus: Additional properties"),
    (f"{MATRIX}slurm:\n  bogus: 1\n", ":4: slurm/bogus: Additional properties"),
    (f"{MATRIX}slurm:\n  classes:\n    tcg: {{feature: x, bogus: 1}}\n", ":5: slurm/classes/tcg/bogus:"),
    (f"{MATRIX}slurm:\n  classes:\n    gpu: {{}}\n", "slurm/classes: 'gpu' is not one of"),
], ids=["top level", "slurm", "slurm class", "slurm class name"])
def test_unknown_keys_in_a_matrix_name_file_line_and_field(sandbox: Sandbox, body: str, says: str) -> None:
    sandbox.refuses(*_matrix(sandbox, body), says=says)


# --- disks: devices refused unless forced ---------------------------------------------------------------------


@pytest.fixture
def hibernated_disk(sandbox: Sandbox) -> Path:
    disk = make_swap_area(sandbox.files / "swap.raw", 4096)
    hibernate_into(disk, 4096)
    return disk


@pytest.fixture
def block_device(sandbox: Sandbox, hibernated_disk: Path) -> Iterator[Path]:
    """A block device node in the sandbox for a loop device backed by a hibernated disk (needs root)."""
    backing = sandbox.files / "loop-backing.raw"
    backing.write_bytes(hibernated_disk.read_bytes())
    try:
        loop = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"no loop device here (root and losetup needed): {error}")
    node = sandbox.files / "blk"
    try:
        os.mknod(node, stat.S_IFBLK | 0o600, os.stat(loop).st_rdev)
        yield node
    finally:
        node.unlink(missing_ok=True)
        subprocess.run(["losetup", "--detach", loop], check=True, timeout=30)


def _link(box: Sandbox, name: str, target: Path) -> Path:
    link = box.files / name
    link.symlink_to(target)
    return link


CHAR_DEVICES: dict[str, Callable[[Sandbox], Path]] = {
    "/dev/null": lambda box: Path("/dev/null"),
    "symlink to /dev/null": lambda box: _link(box, "null-link", Path("/dev/null")),
    "/dev/zero": lambda box: Path("/dev/zero"),
}


@pytest.mark.parametrize("device", CHAR_DEVICES.values(), ids=CHAR_DEVICES.keys())
@pytest.mark.parametrize("command", [["disk", "inspect"], ["disk", "set-signature"]], ids=lambda c: c[-1])
def test_image_commands_refuse_a_character_device(sandbox: Sandbox, device: Callable[[Sandbox], Path],
                                                  command: list[str]) -> None:
    path = device(sandbox)
    value = ["0x1234"] if command[-1] == "set-signature" else []
    line = sandbox.refuses(*command, path, *value, says="is a character device, not a disk image file: refused "
                           "(--force to use it anyway)", isolated=path.name == "zero")
    assert ("(a symlink to /dev/null)" in line) == path.is_symlink()


@pytest.mark.parametrize("through_symlink", [False, True], ids=["node", "symlink"])
def test_image_commands_refuse_a_block_device_unless_forced(sandbox: Sandbox, block_device: Path,
                                                            through_symlink: bool) -> None:
    path = _link(sandbox, "blk-link", block_device) if through_symlink else block_device
    says = "is a block device, not a disk image file: refused (--force to use it anyway)"
    sandbox.refuses("disk", "inspect", path, says=says)
    sandbox.refuses("disk", "set-signature", path, "0x1234", says=says)
    forced = sandbox.lab("disk", "inspect", "--force", path)
    assert forced.status == 0, forced.stderr
    assert "hibernation image present" in forced.stdout


def test_scenario_refuses_a_device_as_its_disk_unless_forced(sandbox: Sandbox, block_device: Path) -> None:
    sandbox.refuses("scenario", "poweroff-baseline", "--disk", "/dev/zero", "--runs-dir", sandbox.runs,
                    says="/dev/zero is a character device, not a disk image file: refused (--force-device to use",
                    isolated=True)
    link = _link(sandbox, "blk-link", block_device)
    sandbox.refuses("scenario", "poweroff-baseline", "--disk", link, "--runs-dir", sandbox.runs,
                    says=f"{link} (a symlink to {block_device}) is a block device")


def test_other_special_files_are_no_disks_even_forced(sandbox: Sandbox) -> None:
    fifo = sandbox.files / "fifo"
    os.mkfifo(fifo)
    sandbox.refuses("disk", "inspect", "--force", fifo, says=f"{fifo} is a named pipe, not a disk image")
    sandbox.refuses("disk", "set-signature", "--force", sandbox.files, "1", says="is a directory, not a disk image")
    sandbox.refuses("scenario", "poweroff-baseline", "--disk", sandbox.files / "absent.raw", "--runs-dir",
                    sandbox.runs, says="no such disk image")


@pytest.mark.parametrize("option", ["--kernel", "--initrd", "--system-map"])
def test_files_a_run_reads_whole_are_no_devices(sandbox: Sandbox, option: str) -> None:
    sandbox.refuses("scenario", "poweroff-baseline", option, "/dev/zero", "--runs-dir", sandbox.runs,
                    says=f"{option} /dev/zero is not a regular file", isolated=True)


def test_a_disk_another_run_holds_is_refused(sandbox: Sandbox, hibernated_disk: Path) -> None:
    """The lab lock a run's machine keeps on its disk, held here as another run would hold it."""
    with DiskLock(hibernated_disk, description="lab machine boot1"):
        says = f"disk {hibernated_disk} is in use: lab lock {hibernated_disk}.lab-lock is held by pid {os.getpid()}"
        sandbox.refuses("scenario", "poweroff-baseline", "--disk", hibernated_disk, "--runs-dir", sandbox.runs,
                        says=says + " (lab machine boot1)")
        sandbox.refuses("disk", "set-signature", hibernated_disk, "0x1234", says="is in use: lab lock")
    assert not is_held(hibernated_disk)


@pytest.mark.parametrize(("image", "says"), [
    ("../../images/debian-arm64", "image: '../../images/debian-arm64' does not match"),
    ("/etc/passwd", "image: '/etc/passwd' does not match"),
], ids=["dot-dot", "absolute"])
def test_a_scenario_names_an_image_recipe_never_a_path(sandbox: Sandbox, image: str, says: str) -> None:
    sandbox.refuses(*_scenario(sandbox, f"name: img\nimage: {image}\n{SCENARIO}"), says=says)


def test_image_recipes_are_looked_up_by_name_only() -> None:
    for name in ("../images/debian-arm64", "debian-arm64/../debian-arm64", ""):
        with pytest.raises(UsageError, match="no image recipe named"):
            ImageRecipe.named(name)
    with pytest.raises(UsageError, match="--kernel-deb wants"):
        ImageRecipe.named("debian-arm64").pinned("linux-image-cloud-arm64=../../x")


def test_a_symlink_to_a_disk_image_file_is_a_disk(sandbox: Sandbox, hibernated_disk: Path) -> None:
    inspected = sandbox.lab("disk", "inspect", _link(sandbox, "disk-link", hibernated_disk))
    assert inspected.status == 0, inspected.stderr
    assert "hibernation image present" in inspected.stdout


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory whose unix sockets' paths fit in 108 bytes (the sandbox's would not)."""
    directory = Path(tempfile.mkdtemp(prefix="lab-hostile-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    monkeypatch.setenv("TMPDIR", str(directory))
    yield directory
    shutil.rmtree(directory)


def _listing(directory: Path) -> list[str]:
    return sorted(str(Path(root, name)) for root, names, files in os.walk(directory) for name in names + files)


@pytest.mark.guest
def test_set_signature_refuses_a_disk_a_running_qemu_holds(sandbox: Sandbox, hibernated_disk: Path,
                                                          short_tmp: Path, default_image) -> None:
    run_dir = RunDirectory(sandbox.root / "vm-run")
    run_dir.path.mkdir()
    spec = MachineSpec(arch="aarch64", kernel=default_image.kernel, initrd=default_image.initramfs,
                       append=default_image.kernel_append, disks=(Disk(hibernated_disk),))
    with Machine(spec, run_dir.boot("boot1"), time.monotonic()) as machine:
        machine.launch()
        assert machine.qmp.execute("query-status")["status"] == "prelaunch"
        before = sandbox.snapshot(skip=run_dir.path), _listing(short_tmp)
        refused = sandbox.lab("disk", "set-signature", hibernated_disk, "0x1234")
        assert (sandbox.snapshot(skip=run_dir.path), _listing(short_tmp)) == before
        assert machine.running
    assert refused.status == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"lab: error: disk {hibernated_disk.resolve()} is in use: lab lock ")
    assert f"is held by pid {os.getpid()} (lab machine boot1)" in line


# --- a guest's console: bytes that are not UTF-8, and control characters ------------------------------------

GUEST_BYTES = (
    b"[    0.000000] Booting Linux on physical CPU 0x0\r\n"
    b"\xff\xfe\xfd invalid bytes, a cut sequence \xe2\x82 and more\r\n"
    b"nul\x00 bell\x07 ansi\x1b[31mred\x1b[0m title\x1b]0;pwned\x07 form\x0cfeed nel\xc2\x85 ls\xe2\x80\xa8 end\r\n"
    b"[   17.100000] reboot: Power down\r\n"
)


def _serve_console(path: Path, payload: bytes) -> threading.Thread:
    """A unix socket that plays a guest's console: the payload, then silence, then it closes."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                connection.sendall(payload)
                time.sleep(1.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_console_bytes_that_are_not_utf8_survive_lines_verdict_result_and_junit(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.path.mkdir()
    boot = run_dir.boot("boot1")
    boot.console.write_bytes(GUEST_BYTES)
    server = _serve_console(tmp_path / "console.sock", GUEST_BYTES)
    console = SerialConsole(tmp_path / "console.sock", time.monotonic())
    console.connect(5)
    with pytest.raises(WaitTimeout) as caught:
        console.expect("a line never printed", 0.5, "a line the guest never prints")
    console.drain_until_closed(10, "the console to close")
    server.join(5)

    lines = [line for _, line in console.lines]
    assert lines == read_console_file(boot.console), "the live reader and the log reader see the same lines"
    assert len(lines) == 4
    assert lines[1] == "\ufffd\ufffd\ufffd invalid bytes, a cut sequence \ufffd and more"
    assert lines[2].startswith("nul\x00 bell\x07 ansi\x1b[31mred") and lines[2].endswith("\u2028 end")
    reason = str(caught.value)
    assert len(reason.splitlines()) == 1 and reason.isprintable()
    assert "nul␀ bell␇ ansi␛[31mred␛[0m title␛]0;pwned␇ form␌feed nel� ls� end" in reason

    record = BootRecord("boot1", ["qemu-system-aarch64"], boot.console, boot.qmp, 0.0, exit_code=0,
                        qmp_events=[{"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"},
                                     "lab_seconds": 17.2}])
    observations = Observations(power_offs=[PowerOffObservation(
        boot="boot1", intent=Intent.POWEROFF, expect="poweroff", step_line=3, record=record, timed_out=False,
        psci_active=False, psci_personality=None)])
    verdict = judge(observations, {"boot1": lines}, reason)
    assert verdict.power_offs[0].kind == "poweroff"
    write_result(run_dir, {"name": "hostile", "path": "-", "description": "-"}, verdict, observations, [], {}, 1.0)
    result = json.loads(run_dir.result.read_text())
    assert result["verdict"]["reason"] == verdict.reason
    witness = next(w for w in result["verdict"]["power_offs"][0]["witnesses"] if w["name"] == "guest-console")
    assert witness["facts"]["power_down"]
    junit = ET.parse(write_junit(run_dir)).getroot()
    failure = junit.find("testcase[@name='run verdict']/failure")
    assert failure is not None and failure.get("message") == reason
    page = write_html_report(run_dir).read_text()
    assert not set(page) & {"\x00", "\x07", "\x1b", "\x0c"}, "report.html holds the guest's control characters"
    assert "␛[31mred" in page


# --- the pytest plugin --------------------------------------------------------------------------------------

QUIET = ("--collect-only", "-q", "-p", "no:cacheprovider")


def _pytest(directory: Path, *args: str) -> Outcome:
    """pytest with the lab's plugin in a process of its own, bounded in time and memory like the isolated cases."""
    done = subprocess.run([sys.executable, "-m", "pytest", *QUIET, *args], cwd=directory, capture_output=True,
                          text=True, timeout=CASE_SECONDS, preexec_fn=_bounded_memory,
                          env={**_lab_env(), "LAB_CACHE_DIR": str(directory / "cache")})
    return Outcome(done.returncode, done.stdout, done.stderr)


def test_pytest_plugin_refuses_aliases_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios/poweroff-baseline.yaml").write_text((SCENARIOS_DIR / "poweroff-baseline.yaml").read_text())
    (tmp_path / "scenarios/notes.yaml").write_text(f"owner: lab\n{BOMB}")
    (tmp_path / "bomb.yaml").write_text(MATRIX + BOMB)
    matrix = _pytest(tmp_path, "--lab-matrix", "bomb.yaml", "scenarios")
    assert matrix.status == pytest.ExitCode.USAGE_ERROR, matrix
    assert "ERROR: bomb.yaml:3: YAML anchors (&l0) are not allowed in matrix files" in matrix.stderr.splitlines()
    plain = _pytest(tmp_path, "--lab-kernel", "default", "scenarios")
    assert plain.status == pytest.ExitCode.OK, ("a YAML file with aliases and no steps is not a scenario", plain)
    (tmp_path / "scenarios/bomb.yaml").write_text(f"name: bomb\n{BOMB}{SCENARIO}")
    bomb = _pytest(tmp_path, "--lab-kernel", "default", "scenarios")
    assert bomb.status == pytest.ExitCode.INTERRUPTED, bomb
    assert "scenarios/bomb.yaml:2: YAML anchors (&l0) are not allowed in scenario files" in bomb.stdout
    assert "Traceback" not in bomb.stdout + bomb.stderr
