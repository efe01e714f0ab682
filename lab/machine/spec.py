"""The typed settings of one QEMU machine: the only thing a QEMU command line is built from.

A spec is saved beside every boot (`machine-NAME.json`), so reproduce.sh rebuilds the exact
command from the same settings instead of re-parsing a command line. Nothing here starts a process.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import SetupError

GUEST_SSH_PORT = 22
CHANNELS = ("console", "qmp", "gdb")
"""QEMU's socket chardevs, each listening where the host puts it: a unix socket, or the host's loopback."""


def unix_channels(directory: Path) -> dict[str, str]:
    """Chardev socket addresses for every channel as unix sockets in `directory`."""
    return {name: f"path={directory / f'{name}.sock'}" for name in CHANNELS}


def free_local_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now (another process may take it before QEMU does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def console_device(arch: str, console: str) -> str:
    """The guest kernel's name for a console device of a machine (its `console=` argument)."""
    if console == "virtio":
        return "hvc0"
    return "ttyAMA0" if arch == "aarch64" else "ttyS0"


def with_console(append: str, arch: str, console: str) -> str:
    """A kernel command line for a console device, whatever console it named before.

    A virtio console also loses `no_console_suspend`: kept registered while its device is frozen for
    the hibernation snapshot, it makes printk wait on a virtqueue that is gone, and hibernation hangs.
    """
    dropped = ("console=", "no_console_suspend") if console == "virtio" else ("console=",)
    kept = [word for word in append.split() if not word.startswith(dropped)]
    return " ".join([f"console={console_device(arch, console)}", *kept])


@dataclass(frozen=True)
class Disk:
    path: Path
    format: str = "raw"


FIRMWARE_CODE = {"aarch64": Path("/usr/share/AAVMF/AAVMF_CODE.fd"), "x86_64": Path("/usr/share/OVMF/OVMF_CODE_4M.fd")}
FIRMWARE_VARS = {"aarch64": Path("/usr/share/AAVMF/AAVMF_VARS.fd"), "x86_64": Path("/usr/share/OVMF/OVMF_VARS_4M.fd")}
FIRMWARE_PACKAGES = {"aarch64": "qemu-efi-aarch64", "x86_64": "ovmf"}


@dataclass(frozen=True)
class Uefi:
    """UEFI firmware (AAVMF, OVMF) on the machine's flash: its code, read-only, and a variable store of the run's
    own (a copy, so that what the guest writes there, systemd's HibernateLocation say, stays with the run)."""

    code: Path
    variables: Path

    @classmethod
    def template(cls, arch: str) -> tuple[Path, Path]:
        """Debian's firmware code and blank variable store for `arch`, or one line naming the package."""
        code, variables = FIRMWARE_CODE.get(arch), FIRMWARE_VARS.get(arch)
        if code is None or variables is None or not code.is_file() or not variables.is_file():
            raise SetupError(f"UEFI firmware for {arch} not found: apt-get install {FIRMWARE_PACKAGES.get(arch, '?')} "
                             "(./bootstrap --tests installs it)")
        return code, variables


@dataclass(frozen=True)
class MachineSpec:
    """Everything that decides a QEMU command line; nothing else does."""

    arch: str
    kernel: Path | None
    """None: nothing to boot, the machine only starts (what the accelerator and gdbstub probes need)."""
    initrd: Path | None
    append: str
    disks: tuple[Disk, ...] = ()
    accel: str = "tcg"
    memory_mib: int = 1024
    cpus: int = 2
    qemu: Path | None = None
    loader: Path | None = None
    """A loader to start `qemu` with (`LOADER --library-path DIR QEMU`): a build shipped with its libraries."""
    gdbstub: bool = False
    ssh_port: int | None = None
    """Host port on 127.0.0.1 forwarded to the guest's port 22 over user-mode networking; None: no network."""
    keep_after_shutdown: bool = False
    """Stay alive (stopped) after the guest powers off, so its RAM can still be read over QMP."""
    virtualization: bool = False
    """Emulate EL2 with the GICv3 KVM needs (aarch64): the guest can be a KVM host of its own guests."""
    console: str = "uart"
    """The guest's console device: `uart` (the machine's own serial port, which shows the earliest boot)
    or `virtio` (a virtconsole: far fewer exits per character, which a nested KVM guest needs)."""
    uefi: Uefi | None = None
    """Boot through UEFI firmware and the boot loader on the disk's EFI system partition; None: QEMU loads
    `kernel` and `initrd` itself (direct kernel boot), which the spec still names for the PSCI layer."""


    @property
    def qemu_binary(self) -> str:
        if self.qemu is not None:
            return str(self.qemu)
        found = shutil.which(f"qemu-system-{self.arch}")
        if found is None:
            raise SetupError(f"qemu-system-{self.arch} not found: run ./bootstrap (installs QEMU >= 10)")
        return found

    def resolved(self) -> MachineSpec:
        """The same spec with the QEMU binary it will run written down, as it is saved for replay."""
        return dataclasses.replace(self, qemu=Path(self.qemu_binary))

    def _machine_args(self) -> list[str]:
        if self.arch == "aarch64":
            cpu = "host" if self.accel == "kvm" else "max,pauth-impdef=on"
            return ["-machine", "virt,virtualization=on,gic-version=3" if self.virtualization else "virt", "-cpu", cpu]
        if self.virtualization:
            raise SetupError(f"no machine model with emulated virtualization for guest arch {self.arch}")
        if self.arch == "x86_64":
            return ["-machine", "q35", "-cpu", "host" if self.accel == "kvm" else "max"]
        raise SetupError(f"no machine model for guest arch {self.arch}")

    def _console_args(self, channels: Mapping[str, str], console_log: str | None) -> list[str]:
        if self.console not in ("uart", "virtio"):
            raise SetupError(f"unknown console device {self.console!r} (uart or virtio)")
        if console_log is None:
            if self.console == "uart":
                return ["-serial", "mon:stdio"]
            chardev = ["-chardev", "stdio,id=console,mux=on", "-mon", "chardev=console,mode=readline"]
        else:
            chardev = ["-chardev", f"socket,id=console,{channels['console']},server=on,wait=off,"
                                   f"logfile={console_log},logappend=off"]
        if self.console == "virtio":
            return [*chardev, "-device", "virtio-serial-pci,romfile=", "-device", "virtconsole,chardev=console"]
        return [*chardev, "-serial", "chardev:console"]

    def _boot_args(self) -> list[str]:
        if self.uefi is not None:
            return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={self.uefi.code}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={self.uefi.variables}"]
        if self.kernel is None:
            return []
        return ["-kernel", str(self.kernel), "-append", self.append]

    def _launcher(self) -> list[str]:
        if self.loader is None:
            return [self.qemu_binary]
        return [str(self.loader), "--library-path", str(self.loader.parent), self.qemu_binary]

    def command(self, channels: Mapping[str, str], console_log: str | None, paused: bool = True) -> list[str]:
        """QEMU's argv. `channels` are the chardev socket addresses (see CHANNELS) where the host puts
        them; with no `console_log` the serial console is the terminal (a replay); `paused` starts the
        guest only on QMP `cont`."""
        args = [
            *self._launcher(), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            *(["-S"] if paused else []),
            *self._machine_args(),
            "-accel", self.accel, "-smp", str(self.cpus), "-m", str(self.memory_mib),
            *self._boot_args(),
            *self._console_args(channels, console_log),
            "-chardev", f"socket,id=qmp,{channels['qmp']},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
        ]
        if self.initrd is not None and self.uefi is None:
            args += ["-initrd", str(self.initrd)]
        if self.keep_after_shutdown:
            args.append("-no-shutdown")
        for index, disk in enumerate(self.disks):
            args += [
                "-blockdev", f"driver=file,filename={disk.path},node-name=file{index}",
                "-blockdev", f"driver={disk.format},file=file{index},node-name=disk{index}",
                "-device", f"virtio-blk-pci,drive=disk{index},romfile=",
            ]
        if self.gdbstub:
            args += ["-chardev", f"socket,id=gdb,{channels['gdb']},server=on,wait=off", "-gdb", "chardev:gdb"]
        if self.ssh_port is not None:
            args += [
                "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:{GUEST_SSH_PORT}",
                "-device", "virtio-net-pci,netdev=net0,romfile=",
            ]
        return args

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["disks"] = [{"path": str(d.path), "format": d.format} for d in self.disks]
        if self.uefi is not None:
            data["uefi"] = {"code": str(self.uefi.code), "variables": str(self.uefi.variables)}
        for name in ("kernel", "initrd", "qemu", "loader"):
            data[name] = None if data[name] is None else str(data[name])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MachineSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for name in ("kernel", "initrd", "qemu", "loader"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        values["disks"] = tuple(Disk(Path(d["path"]), d.get("format", "raw")) for d in values.get("disks", ()))
        if values.get("uefi") is not None:
            values["uefi"] = Uefi(Path(values["uefi"]["code"]), Path(values["uefi"]["variables"]))
        return cls(**values)
