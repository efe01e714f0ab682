"""`lab qemu test`: the series' own tests, run by QEMU's own runners on the lab's native build tree.

The series carries two tests a QEMU maintainer would run (qemu/README.md): a bare-metal TCG test
(tests/tcg/aarch64/system/psci.c, four runs through `make`) and a functional test that hibernates a
Linux guest and reads QMP (tests/functional/aarch64/test_psci_off2.py, through `meson test`). Nothing
is downloaded: the functional test boots the lab's default arm64 image, handed over in two variables.
Each runner's whole output goes to a log; the lab prints QEMU's own summary lines and fails on any
failure, and on a TCG case of the functional test that did not run (a skip would hide a broken setup).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.errors import SetupError, UsageError
from lab.qemu.builds import patched_binaries, tree_in_place

TCG_RUNS = ("run-psci", "run-psci-type0", "run-psci-smc32", "run-psci-smc64-hi")
FUNCTIONAL_TESTS = ("func-aarch64-psci_off2", "func-aarch64-aarch64_psci_off2")
"""The functional test's meson name: QEMU 10.1 and later keep per-target directories, 10.0 a flat one."""
REQUIRED_CASES = ("test_hibernate_tcg", "test_poweroff_tcg")
RUNNER_SECONDS = 1800.0
NIC_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")
"""tests/tcg boots `-M virt` with its default virtio NIC, whose ROM the +ds source does not ship: Debian's
ipxe-qemu has it (qemu-system-arm depends on it), and the build tree's data directory links to it."""
TAP_LINE = re.compile(r"^(?:ok|not ok) \d+ .*$", re.MULTILINE)


@dataclass(frozen=True)
class BuildTree:
    """A finished native build whose source and build trees are still where configure saw them."""

    directory: Path

    @property
    def build(self) -> Path:
        return self.directory / "build"

    @property
    def record(self) -> dict[str, object]:
        loaded = json.loads((self.directory / "build.json").read_text())
        return loaded if isinstance(loaded, dict) else {}

    @property
    def logs(self) -> Path:
        return self.directory / "test-logs"


@dataclass(frozen=True)
class HarnessResult:
    """One runner's outcome, the lines of QEMU's own summary worth printing, and the log with everything."""

    name: str
    passed: bool
    summary: tuple[str, ...]
    log: Path


def newest_tree() -> BuildTree:
    """The newest finished native build that kept its trees; a one-line refusal when there is none."""
    for binary in patched_binaries():
        directory = binary.parent.parent
        kept = (directory / "build" / "build.ninja").is_file() and (directory / "src").is_dir()
        if kept and tree_in_place(directory):
            return BuildTree(directory)
    raise UsageError("lab qemu test needs a native build of the series with its source and build trees: "
                     "run `lab qemu build` first")


def _run(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        try:
            return subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stream,
                                  stderr=subprocess.STDOUT, timeout=RUNNER_SECONDS).returncode
        except subprocess.TimeoutExpired:
            stream.write(f"\nlab: the runner took longer than {RUNNER_SECONDS:.0f}s and was stopped\n")
            return 124


def link_nic_rom(tree: BuildTree) -> None:
    if not NIC_ROM.is_file():
        raise SetupError(f"QEMU's TCG tests need {NIC_ROM}: apt-get install ipxe-qemu")
    link = tree.build / "qemu-bundle" / "usr" / "local" / "share" / "qemu" / NIC_ROM.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(NIC_ROM)


def run_tcg(tree: BuildTree) -> HarnessResult:
    """The bare-metal PSCI test's four runs, through tests/tcg's make targets."""
    link_nic_rom(tree)
    log = tree.logs / "tcg-psci.log"
    code = _run(["make", "-C", "tests/tcg/aarch64-softmmu", *TCG_RUNS], tree.build, log)
    outputs = tree.build / "tests" / "tcg" / "aarch64-softmmu"
    summary = []
    for run in TCG_RUNS:
        output = outputs / ("psci.out" if run == "run-psci" else f"{run}.out")
        lines = output.read_text(errors="replace").splitlines() if output.is_file() else []
        failures = [line for line in lines if line.startswith("FAIL")]
        last = lines[-1] if lines else "no output"
        summary.append(f"{run}: {'; '.join(failures[:3]) if failures else last}")
    return HarnessResult("tests/tcg aarch64 psci", code == 0, tuple(summary), log)


def _functional_name(tree: BuildTree) -> str:
    listed = subprocess.run([str(tree.build / "pyvenv" / "bin" / "meson"), "test", "--list", "--setup", "thorough",
                             "--no-rebuild"], cwd=tree.build, capture_output=True, text=True, timeout=300)
    names = set(re.findall(r"func-aarch64-\w+", listed.stdout))
    chosen = next((name for name in FUNCTIONAL_TESTS if name in names), None)
    if chosen is None:
        raise SetupError(f"this build has no functional PSCI test (meson lists none of {', '.join(FUNCTIONAL_TESTS)}): "
                         f"is the series applied? ({tree.directory})")
    return chosen


def run_functional(tree: BuildTree, kernel: Path, initramfs: Path) -> HarnessResult:
    """The functional test through `meson test`; its TCG cases must have run and passed, not skipped."""
    name = _functional_name(tree)
    log = tree.logs / "functional-psci_off2.log"
    env = {**os.environ, "QEMU_TEST_PSCI_OFF2_KERNEL": str(kernel), "QEMU_TEST_PSCI_OFF2_INITRD": str(initramfs)}
    code = _run([str(tree.build / "pyvenv" / "bin" / "meson"), "test", "--no-rebuild", "--setup", "thorough",
                 "--print-errorlogs", name], tree.build, log, env)
    said = log.read_text(errors="replace")
    testlog = tree.build / "meson-logs" / "testlog-thorough.txt"
    tap = TAP_LINE.findall(testlog.read_text(errors="replace")) if testlog.is_file() else []
    ran = {case for case in REQUIRED_CASES if any(line.startswith("ok ") and case in line and "# SKIP" not in line
                                                  for line in tap)}
    missing = [case for case in REQUIRED_CASES if case not in ran]
    summary = [*tap, *(line.strip() for line in said.splitlines() if line.strip().startswith(("Ok:", "Fail:",
                                                                                              "Skipped:")))]
    if missing:
        summary.append(f"did not pass (failed, skipped or not run): {', '.join(missing)}")
    return HarnessResult(f"tests/functional {name}", code == 0 and not missing, tuple(summary), log)


def run_all(tree: BuildTree, kernel: Path, initramfs: Path, say: Callable[[str], None] = print) -> bool:
    """Both runners on `tree`, each one's summary said as it ends; True when both passed."""
    say(f"on {tree.directory.name} ({tree.record.get('source')})")
    results = []
    runners: tuple[Callable[[], HarnessResult], ...] = (lambda: run_tcg(tree),
                                                        lambda: run_functional(tree, kernel, initramfs))
    for runner in runners:
        result = runner()
        say(f"{'PASS' if result.passed else 'FAIL'} {result.name} (log: {result.log})")
        for line in result.summary:
            say(f"  {line}")
        results.append(result)
    return all(result.passed for result in results)
