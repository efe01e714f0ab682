"""The accelerator choice: KVM counts only when it boots the run's own kernel, probed for real."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab.hosts.local import LOCAL
from lab.image.guest_image import GuestImage
from lab.machine import accel

QEMU = Path(shutil.which("qemu-system-aarch64") or "qemu-system-aarch64")


def _silent_kernel(tmp_path: Path) -> Path:
    """A kernel file QEMU loads but that never prints: 64 KiB of zeros."""
    kernel = tmp_path / "zeros"
    kernel.write_bytes(bytes(64 * 1024))
    return kernel


@pytest.mark.guest
def test_a_real_kernel_prints_its_banner_on_the_early_console(default_image: GuestImage) -> None:
    assert accel.probe_kernel(QEMU, "tcg", "aarch64", default_image.kernel) == accel.ProbeOutcome(True)


@pytest.mark.qemu
def test_a_kernel_that_prints_nothing_fails_the_probe_with_the_reason(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_BOOT_SECONDS", 2.0)
    outcome = accel.probe_kernel(QEMU, "tcg", "aarch64", _silent_kernel(tmp_path))
    assert outcome == accel.ProbeOutcome(False, "no kernel banner on the early console within 2s")


def test_a_foreign_guest_arch_gets_tcg_with_the_reason() -> None:
    foreign = "x86_64" if accel.host_arch() == "aarch64" else "aarch64"
    choice = accel.choose_accel(foreign, None)
    assert (choice.name, choice.reason) == ("tcg", f"host is {accel.host_arch()}, guest is {foreign}: KVM needs "
                                                   "the same arch")


@pytest.mark.qemu
@pytest.mark.depends_on_kvm
@pytest.mark.skipif(not accel.kvm_status(accel.host_arch())[0], reason="KVM does not start a machine on this host")
def test_the_best_accelerator_is_never_a_kvm_that_cannot_boot_the_run_s_kernel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "PROBE_BOOT_SECONDS", 2.0)
    choice = accel.choose_accel(accel.host_arch(), None, kernel=_silent_kernel(tmp_path))
    assert choice.name == "tcg"
    assert choice.reason.startswith("a KVM machine starts but the kernel does not boot on it: ")



@pytest.mark.qemu
@pytest.mark.depends_on_kvm
def test_a_lab_host_passes_the_same_kernel_probe_as_this_machine(default_x86_image: GuestImage,
                                                                 default_image: GuestImage) -> None:
    """The lab-host probe, run here through the host interface (this machine as the host): it agrees with
    the local one, whatever KVM can do on this machine."""
    for arch, image in (("x86_64", default_x86_image), ("aarch64", default_image)):
        local_usable, _ = accel.kvm_status(arch, image.kernel)
        remote_usable, reason = accel._kvm_on(LOCAL, arch, image.kernel)
        assert remote_usable == local_usable, reason
        if not remote_usable and accel.host_arch() == arch and Path("/dev/kvm").exists():
            assert reason.startswith(f"a KVM machine on host {LOCAL.name} does not boot the kernel: "), reason
