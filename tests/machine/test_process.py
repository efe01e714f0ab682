"""The QEMU command line from typed settings, and the lifecycle against real QEMU."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from lab.disk.lock import DiskBusy, DiskLock
from lab.errors import MachineError
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec, unix_channels
from lab.rundir import RunDirectory


def _spec(tmp_path: Path, **changes) -> MachineSpec:
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"\0" * 64)
    settings = {"arch": "aarch64", "kernel": kernel, "initrd": None, "append": "console=ttyAMA0 nokaslr"}
    return MachineSpec(**(settings | changes))


def test_command_line_is_a_list_built_from_settings(tmp_path):
    disk = Disk(tmp_path / "swap.raw")
    channels = unix_channels(tmp_path / "s")
    argv = _spec(tmp_path, disks=(disk,), gdbstub=True).command(channels, str(tmp_path / "console.log"))
    assert argv[argv.index("-append") + 1] == "console=ttyAMA0 nokaslr"
    assert argv[argv.index("-cpu") + 1] == "max,pauth-impdef=on"
    assert argv[argv.index("-accel"):argv.index("-accel") + 2] == ["-accel", "tcg"]
    assert "-S" in argv and "-nodefaults" in argv and "-no-reboot" in argv
    assert f"driver=file,filename={disk.path},node-name=file0" in argv
    assert argv[argv.index("-gdb") + 1] == "chardev:gdb"
    assert f"socket,id=gdb,path={tmp_path / 's' / 'gdb.sock'},server=on,wait=off" in argv
    kvm = _spec(tmp_path, accel="kvm").command(unix_channels(tmp_path / "s"), str(tmp_path / "console.log"))
    assert kvm[kvm.index("-cpu") + 1] == "host"
    assert "-gdb" not in kvm


def test_qemu_that_fails_to_start_raises_with_its_output(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="lab")
    spec = _spec(tmp_path, memory_mib=10**9)
    machine = Machine(spec, RunDirectory(tmp_path).boot("boot1"), time.monotonic())
    with pytest.raises(MachineError) as caught, machine:
        machine.launch(timeout=15)
    assert "QEMU exited with status 1 at start" in str(caught.value)
    assert caught.value.command[0].endswith("qemu-system-aarch64")
    assert (tmp_path / "qemu-boot1.cmdline").exists()
    assert "boot1: QEMU pid" in caplog.text and "reaped: exited with status 1" in caplog.text


def test_close_reaps_a_running_qemu_and_releases_the_disk(tmp_path, default_image):
    disk = tmp_path / "swap.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    spec = MachineSpec(arch="aarch64", kernel=default_image.kernel, initrd=default_image.initramfs,
                       append=default_image.kernel_append, disks=(Disk(disk),))
    with Machine(spec, RunDirectory(tmp_path).boot("boot1"), time.monotonic()) as machine:
        machine.launch()
        pid = machine._process.pid
        assert machine.qmp.execute("query-status")["status"] == "prelaunch"
        with pytest.raises(DiskBusy):
            DiskLock(disk).acquire()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert machine.record.killed_by_lab
    with DiskLock(disk):
        pass
    assert os.stat(tmp_path / "boot-boot1.json").st_size > 0
