"""`lab doctor` on this machine for real, and on a PATH without QEMU or with a broken one."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import time
from pathlib import Path

import pytest

from lab import doctor
from lab.doctor import AREAS, Finding, diagnose, render
from lab.machine import accel
from lab.machine.accel import kvm_status
from lab.machine.process import SIGNAL_WAIT_SECONDS
from tests.support.timing import LOADED_HOST_SLACK

pytestmark = pytest.mark.qemu

SLEEPER = """#!/bin/sh
echo $$ > "${0%/*}/pid"
exec /bin/sleep 30
"""
"""Stays up and says nothing, like QEMU would if liveness were all a probe looked at."""

FAKE_OLD_QEMU = """#!/bin/sh
case " $* " in
  *" --version "*) echo "QEMU emulator version 9.2.0"; exit 0 ;;
  *" -gdb "*) echo "qemu-system-aarch64: -gdb: fake gdbstub missing" >&2; exit 1 ;;
  *" -accel kvm "*) echo "qemu-system-aarch64: fake KVM refusal" >&2; exit 1 ;;
esac
exec /bin/sleep 30
"""


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    return diagnose()


def _one(findings: list[Finding], area: str, starts: str) -> Finding:
    matching = [f for f in findings if f.area == area and f.detail.startswith(starts)]
    assert len(matching) == 1, f"expected one {area} finding starting {starts!r}: {findings}"
    return matching[0]


@pytest.fixture
def qemu_free_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding nothing, so every QEMU binary is missing."""
    monkeypatch.setenv("PATH", str(tmp_path))
    return tmp_path


def test_tcg_works_for_aarch64_guests(findings: list[Finding]) -> None:
    accel = _one(findings, "accel", "aarch64 guests")
    assert accel.status == "ok"
    assert "TCG works" in accel.detail


@pytest.mark.depends_on_kvm
@pytest.mark.skipif(kvm_status("aarch64")[0], reason="KVM runs aarch64 guests on this host")
def test_kvm_is_unusable_for_aarch64_with_the_reason_runs_use(findings: list[Finding]) -> None:
    detail = _one(findings, "accel", "aarch64 guests").detail
    assert f"KVM unusable ({kvm_status('aarch64')[1]})" in detail
    assert "the lab picks TCG" in detail


def test_qemu_10_or_newer_is_found(findings: list[Finding]) -> None:
    for binary in ("qemu-system-aarch64", "qemu-img", "qemu-io"):
        finding = _one(findings, "qemu", binary)
        assert finding.status == "ok", finding
        version = re.match(rf"{binary} (\d+)\.", finding.detail)
        assert version is not None and int(version.group(1)) >= 10, finding.detail


def test_gdbstub_and_python_deps_are_ok(findings: list[Finding]) -> None:
    assert _one(findings, "gdbstub", "qemu-system-aarch64").status == "ok"
    assert _one(findings, "python", "Python").status == "ok"


def test_render_fits_one_screen_and_covers_every_area(findings: list[Finding]) -> None:
    text = render(findings)
    lines = text.splitlines()
    assert len(lines) < 50
    assert max(len(line) for line in lines) <= 120
    assert {f.area for f in findings} == set(AREAS)
    for area in AREAS:
        assert re.search(rf"^\S+\s+{re.escape(area)}\s", text, re.MULTILINE), f"{area} missing from:\n{text}"


def test_missing_qemu_is_reported_with_the_install_hint(qemu_free_path: Path) -> None:
    findings = diagnose()
    for binary in ("qemu-system-aarch64", "qemu-img", "qemu-io"):
        finding = _one(findings, "qemu", binary)
        assert finding.status == "missing"
        assert finding.fix is not None and "./bootstrap" in finding.fix
        assert "qemu-system-arm qemu-utils" in finding.fix
    assert _one(findings, "accel", "aarch64 guests").status == "missing"
    assert _one(findings, "gdbstub", "qemu-system-aarch64").status == "missing"
    assert "fix: run ./bootstrap" in render(findings)


@pytest.mark.depends_on_kvm
def test_probes_report_what_a_broken_qemu_says(qemu_free_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_QMP_SECONDS", 1.0)
    for guest in ("aarch64", "x86_64"):
        fake = qemu_free_path / f"qemu-system-{guest}"
        fake.write_text(FAKE_OLD_QEMU)
        fake.chmod(0o755)
    findings = diagnose()
    version = _one(findings, "qemu", "qemu-system-aarch64")
    assert version.status == "missing"
    assert "9.2.0" in version.detail and "too old" in version.detail
    tcg = _one(findings, "accel", "aarch64 guests")
    assert "TCG fails (no QMP answer within 1s although the process kept running)" in tcg.detail
    assert tcg.status == "missing"
    x86 = _one(findings, "accel", "x86_64 guests").detail
    assert f"KVM unusable ({kvm_status('x86_64')[1]})" in x86
    gdbstub = _one(findings, "gdbstub", "qemu-system-aarch64")
    assert gdbstub.status == "missing"
    assert "fake gdbstub missing" in gdbstub.detail


@pytest.mark.depends_on_kvm
@pytest.mark.skipif(not (Path("/dev/kvm").exists() and platform.machine() == "x86_64"),
                    reason="no /dev/kvm on an x86_64 host here")
def test_a_qemu_that_refuses_kvm_is_quoted(qemu_free_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_QMP_SECONDS", 1.0)
    for guest in ("aarch64", "x86_64"):
        fake = qemu_free_path / f"qemu-system-{guest}"
        fake.write_text(FAKE_OLD_QEMU)
        fake.chmod(0o755)
    x86 = _one(diagnose(), "accel", "x86_64 guests").detail
    assert "a KVM machine fails to start: qemu-system-aarch64: fake KVM refusal" in x86


def test_each_known_qemu_is_listed_with_what_it_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAB_QEMU_OFF2_CONTRACT", raising=False)
    lines = [f.detail for f in diagnose() if f.area == "system-off2"]
    debian = next(line for line in lines if line.startswith("debian: "))
    assert "reports SYSTEM_OFF2 like SYSTEM_OFF (stock)" in debian
    assert "TCG with the lab's PSCI layer, contract none; KVM contract none" in debian


def test_a_process_that_only_stays_up_is_not_a_working_accelerator(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_QMP_SECONDS", 1.0)
    fake = tmp_path / "qemu-system-aarch64"
    fake.write_text(SLEEPER)
    fake.chmod(0o755)
    started = time.monotonic()
    outcome = accel.probe_accel(fake, "tcg", "aarch64")
    assert time.monotonic() - started < 1.0 + SIGNAL_WAIT_SECONDS + LOADED_HOST_SLACK, "the sleeper lives 30 s"
    assert not outcome.works
    assert "no QMP answer" in outcome.error
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_real_qemu_confirms_tcg_over_qmp_and_refuses_a_foreign_kvm() -> None:
    qemu = Path(shutil.which("qemu-system-aarch64") or "qemu-system-aarch64")
    assert accel.probe_accel(qemu, "tcg", "aarch64") == accel.ProbeOutcome(True)
    if platform.machine() != "aarch64":
        refused = accel.probe_accel(qemu, "kvm", "aarch64")
        assert not refused.works
        assert "kvm" in refused.error


def test_required_distributions_follow_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    requirements = [
        "qemu.qmp>=0.0.6",
        "PyYAML >= 6.0",
        "rich[jupyter]>=13",
        'tomli>=2; python_version < "3.11"',
        'typing-extensions; python_version >= "3.11"',
        'pywin32; sys_platform == "win32"',
        'pytest>=8; extra == "test"',
    ]
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: requirements)
    assert doctor._required_distributions() == ["qemu.qmp", "PyYAML", "rich", "typing-extensions"]
