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
from debian.debian_support import Version

from tests.support.kernels import kernel_package, newest_served, served

LAB = [sys.executable, "-m", "lab.cli"]
PROBE = """name: off2-probe
description: Hibernate once; the guest must power off with SYSTEM_OFF2.
psci: kvm
steps:
  - boot: {expect: fresh}
  - hibernate: {expect: hibernate-off2}
"""


def lab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=1800, cwd=cwd, env=os.environ)


@pytest.mark.guest
def test_bisect_finds_the_first_served_version_with_system_off2(tmp_path: Path) -> None:
    """From the newest served 7.2 (SYSTEM_OFF2 since 6.13) back to the newest served 6.12 (plain SYSTEM_OFF):
    the versions between are whatever the archive serves today."""
    (tmp_path / "probe.yaml").write_text(PROBE)
    new, old = newest_served("7.2"), newest_served("6.12")
    span = [v for v in reversed(served()) if Version(old) <= Version(v) <= Version(new)]
    first_with_off2 = min((v for v in span if Version(v) >= Version("6.13")), key=Version)
    done = lab("bisect", "probe.yaml", "--good", new, "--bad", old, "--accel", "tcg", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"bisecting off2-probe over {len(span)} {kernel_package()} versions: {' '.join(span)}"
    verdicts = [line.split(" [")[0] for line in lines if line.split(":")[0] in span and " [" in line]
    for verdict in verdicts:
        version, status = verdict.split(":")[0], verdict.split()[1]
        assert status == ("PASS" if Version(version) >= Version("6.13") else "FAIL"), verdict
    assert f"{first_with_off2} fixed it: {old} FAIL, {first_with_off2} PASS" in done.stdout
    failed = next(v for v in verdicts if v.startswith(f"{old}:"))
    assert "boot1 power-off" in failed and "hibernate-off" in failed
    for version in (old, first_with_off2):
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
