"""The host's machine: TCG with EL2 and the GICv3 KVM needs, and a spec that round-trips through JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import SetupError
from lab.machine.spec import MachineSpec, console_device, unix_channels, with_console


def _spec(tmp_path: Path, **changes) -> MachineSpec:
    settings = {"arch": "aarch64", "kernel": tmp_path / "vmlinuz", "initrd": tmp_path / "initramfs.cpio",
                "append": "console=ttyAMA0 lab.swap=none", "memory_mib": 3072, "ssh_port": 2222}
    return MachineSpec(**(settings | changes))


def test_virtualization_emulates_el2_with_gicv3_under_tcg(tmp_path):
    argv = _spec(tmp_path, virtualization=True).command(unix_channels(tmp_path), str(tmp_path / "console.log"))
    assert argv[argv.index("-machine") + 1] == "virt,virtualization=on,gic-version=3"
    assert argv[argv.index("-cpu") + 1] == "max,pauth-impdef=on"
    plain = _spec(tmp_path).command(unix_channels(tmp_path), str(tmp_path / "console.log"))
    assert plain[plain.index("-machine") + 1] == "virt"


def test_a_host_spec_round_trips_and_older_specs_read_as_no_virtualization(tmp_path):
    spec = _spec(tmp_path, virtualization=True)
    assert MachineSpec.from_json(spec.to_json()) == spec
    older = spec.to_json()
    del older["virtualization"]
    assert MachineSpec.from_json(older).virtualization is False


def test_no_machine_model_emulates_virtualization_for_x86(tmp_path):
    with pytest.raises(SetupError, match="x86_64"):
        spec = _spec(tmp_path, arch="x86_64", virtualization=True)
        spec.command(unix_channels(tmp_path), str(tmp_path / "console.log"))


def test_a_virtio_console_replaces_the_uart_and_the_kernel_is_told_so(tmp_path):
    argv = _spec(tmp_path, console="virtio").command(unix_channels(tmp_path), str(tmp_path / "console.log"))
    assert "-serial" not in argv
    assert argv[argv.index("virtconsole,chardev=console") - 1] == "-device"
    assert "virtio-serial-pci,romfile=" in argv
    assert console_device("aarch64", "virtio") == "hvc0"
    assert console_device("aarch64", "uart") == "ttyAMA0" and console_device("x86_64", "uart") == "ttyS0"
    append = "console=ttyAMA0 nokaslr console=tty0 no_console_suspend panic=-1"
    assert with_console(append, "aarch64", "virtio") == "console=hvc0 nokaslr panic=-1"
    assert with_console(append, "aarch64", "uart") == "console=ttyAMA0 nokaslr no_console_suspend panic=-1"


def test_an_unknown_console_device_is_a_setup_error(tmp_path):
    with pytest.raises(SetupError, match="uart or virtio"):
        _spec(tmp_path, console="spi").command(unix_channels(tmp_path), str(tmp_path / "console.log"))
