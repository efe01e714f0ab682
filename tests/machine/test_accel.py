"""The accelerator choice: KVM counts only when it boots the run's own kernel, probed for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.image.guest_image import GuestImage
from lab.machine import accel


def _silent_kernel(tmp_path: Path) -> Path:
    """A kernel file QEMU loads but that never prints: 64 KiB of zeros."""
    kernel = tmp_path / "zeros"
    kernel.write_bytes(bytes(64 * 1024))
    return kernel


@pytest.mark.guest
def test_a_real_kernel_prints_its_banner_on_the_early_console(default_image: GuestImage) -> None:
    assert accel.probe_kernel("qemu-system-aarch64", "tcg", "aarch64", default_image.kernel) == accel.ProbeOutcome(True)


def test_a_kernel_that_prints_nothing_fails_the_probe_with_the_reason(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_BOOT_SECONDS", 2.0)
    outcome = accel.probe_kernel("qemu-system-aarch64", "tcg", "aarch64", _silent_kernel(tmp_path))
    assert outcome == accel.ProbeOutcome(False, "no kernel banner on the early console within 2s")


@pytest.mark.depends_on_kvm
def test_the_best_accelerator_is_never_a_kvm_that_cannot_boot_the_run_s_kernel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_BOOT_SECONDS", 2.0)
    kernel = _silent_kernel(tmp_path)
    works_paused, _ = accel.kvm_status("x86_64")
    choice = accel.choose_accel("x86_64", None, kernel=kernel)
    assert choice.name == "tcg"
    if works_paused:
        assert choice.reason.startswith("a KVM machine starts but the kernel does not boot on it: ")

