"""`lab bisect` and `lab scenario --bisect-exit` on real guests and the kernel versions Debian serves.

The probe expects SYSTEM_OFF2. Debian's 6.12 kernel falls back to plain SYSTEM_OFF (it fails), the
default kernel offers SYSTEM_OFF2 (it passes): bisecting from the default down to 6.12 finds the
first served version that offers it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LAB = [sys.executable, "-m", "lab.cli"]
PROBE = """name: off2-probe
description: Hibernate once; the guest must power off with SYSTEM_OFF2.
psci: kvm
steps:
  - boot: {expect: fresh}
  - hibernate: {expect: hibernate-off2}
"""
OLD_KERNEL = "6.12.117-1"


def lab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=1800, cwd=cwd, env=os.environ)


@pytest.mark.guest
def test_bisect_finds_the_first_served_version_with_system_off2(tmp_path: Path) -> None:
    (tmp_path / "probe.yaml").write_text(PROBE)
    done = lab("bisect", "probe.yaml", "--good", "7.2.13-1", "--bad", OLD_KERNEL, "--accel", "tcg", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"bisecting off2-probe over 3 linux-image-cloud-arm64 versions: 7.2.13-1 7.2.12-1 {OLD_KERNEL}"
    verdicts = [line.split(" [")[0] for line in lines if line.startswith(("7.2", "6.12")) and " [" in line]
    assert [line.split(":")[0] + " " + line.split()[1] for line in verdicts] == [
        "7.2.13-1 PASS", f"{OLD_KERNEL} FAIL", f"{OLD_KERNEL} FAIL", "7.2.12-1 PASS", "7.2.12-1 PASS"]
    assert f"7.2.12-1 fixed it: {OLD_KERNEL} FAIL, 7.2.12-1 PASS (5 runs)" in done.stdout
    assert "boot1 power-off" in verdicts[1] and "hibernate-off" in verdicts[1]
    for version in (OLD_KERNEL, "7.2.12-1"):
        run_dir = tmp_path / next(line for line in lines if line.startswith(f"  {version}: ")).split(": ", 1)[1]
        assert (run_dir / "result.json").is_file()


@pytest.mark.guest
def test_bisect_exit_maps_pass_fail_and_the_lab_s_own_failures(tmp_path: Path) -> None:
    (tmp_path / "probe.yaml").write_text(PROBE)
    passed = lab("scenario", "probe.yaml", "--accel", "tcg", "--bisect-exit", cwd=tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    failed = lab("scenario", "probe.yaml", "--accel", "tcg", "--psci", "none", "--bisect-exit", cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    unserved = lab("scenario", "probe.yaml", "--kernel-deb", "linux-image-cloud-arm64=0.1-1", "--bisect-exit",
                   cwd=tmp_path)
    assert unserved.returncode == 125 and "no linux-image-cloud-arm64:arm64=0.1-1" in unserved.stderr, \
        unserved.stderr
    unknown = lab("scenario", "no-such-scenario", "--bisect-exit", cwd=tmp_path)
    assert unknown.returncode == 128 and unknown.stderr.count("\n") == 1, unknown.stderr
