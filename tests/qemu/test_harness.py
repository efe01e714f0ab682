"""`lab qemu test`: the series' own tests in QEMU's harness (tests/tcg and tests/functional), run by QEMU's
runners on the lab's build tree, as a maintainer would run them before taking the series."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

LAB = [sys.executable, "-m", "lab.cli"]


def test_lab_qemu_test_passes_both_runners(patched_qemu: Path) -> None:
    done = subprocess.run([*LAB, "qemu", "test"], capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("lab qemu test: PASS tests/tcg aarch64 psci") for line in lines), done.stdout
    assert any(line.startswith("lab qemu test: PASS tests/functional func-aarch64") for line in lines), done.stdout
    for run in ("run-psci", "run-psci-type0", "run-psci-smc32", "run-psci-smc64-hi"):
        assert any(f"{run}: powering off: SYSTEM_OFF2" in line for line in lines), (run, done.stdout)
    assert any("ok" in line and "test_hibernate_tcg" in line and "SKIP" not in line for line in lines), done.stdout


def test_the_kept_trees_name_their_real_path_so_they_outlive_the_tests_cache(patched_qemu: Path) -> None:
    """The tests reach the lab's QEMU cache through a link in a directory removed when they end: a tree configured
    through that link named it, and the next session's `lab qemu test` found a dangling tests/tcg Makefile."""
    from lab.qemu.builds import builds_root, tree_in_place
    from lab.qemu.harness import newest_tree

    tree = newest_tree()
    assert tree.directory.is_relative_to(builds_root()) and builds_root() == builds_root().resolve()
    assert tree_in_place(tree.directory)
    makefile = os.readlink(tree.build / "tests" / "tcg" / "aarch64-softmmu" / "Makefile")
    assert Path(makefile).is_relative_to(tree.directory), makefile


def test_a_tree_configured_elsewhere_is_not_in_place(tmp_path: Path) -> None:
    from lab.qemu.builds import tree_in_place

    (tmp_path / "build.json").write_text(json.dumps({"tree": "/tmp/lab-tests-gone/cache/qemu/builds/x"}))
    assert not tree_in_place(tmp_path)
    (tmp_path / "build.json").write_text(json.dumps({"source": "qemu 1:10.2.2+ds-1"}))
    assert not tree_in_place(tmp_path), "a build from before the tree was recorded is built again"
    (tmp_path / "build.json").write_text(json.dumps({"tree": str(tmp_path)}))
    assert tree_in_place(tmp_path)


def test_lab_qemu_test_without_a_build_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "empty-cache"))
    done = subprocess.run([*LAB, "qemu", "test"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "lab: error: lab qemu test needs a native build of the series with its source and build trees: "
        "run `lab qemu build` first"]


def test_a_functional_run_whose_guest_cannot_boot_fails(patched_qemu: Path, tmp_path: Path) -> None:
    """An empty kernel file: QEMU refuses it, the functional test errors, and the lab says which cases did not pass."""
    from lab.qemu.harness import newest_tree, run_functional

    garbage = tmp_path / "not-a-kernel"
    garbage.write_bytes(b"")
    result = run_functional(newest_tree(), garbage, garbage)
    assert not result.passed
    assert "did not pass (failed, skipped or not run): test_hibernate_tcg, test_poweroff_tcg" in result.summary
    assert result.log.is_file()
