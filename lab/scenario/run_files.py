"""A run's files where its QEMU runs: the image's files, the run's own disk and UEFI variable store.

On this machine they live in the run directory. On a lab host, which keeps its files in RAM, the
image's files are copied once and kept by sha256 (`Host.file_for`), the run works in a directory of
its own there, and `collect` brings the disk and the variable store home and removes that directory.
A system image's disk is never copied whole to a host: the run writes to an overlay of the disk
packed for hosts (lab.disk.packed), and only the overlay comes home.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import tempfile
from pathlib import Path

from lab.disk.packed import packed_disk, rebase_home
from lab.errors import SetupError, UsageError
from lab.hosts.base import Host
from lab.hosts.local import LOCAL
from lab.image.boot_loader import esp_partition, install_boot_entry, systemd_boot
from lab.image.guest_image import GuestImage
from lab.machine.spec import Disk, Uefi
from lab.rundir import RunDirectory

QEMU_IMG_SECONDS = 600.0
ESP_WRITE_SECONDS = 120.0
COPY_CHUNK = 1 << 20


class RunFiles:
    """The files of one run on its host; see the module docstring."""

    def __init__(self, image: GuestImage, run_dir: RunDirectory, host: Host, uefi: bool) -> None:
        if uefi and not image.is_system:
            raise UsageError(f"`firmware: uefi` boots a system image's boot loader; {image.name} has none "
                             "(guest: system)")
        self.image = image
        self.run_dir = run_dir
        self.host = host
        self.workdir = str(run_dir.path) if host is LOCAL else host.make_dir("run-")
        self.disk = Disk(Path(self.workdir) / "swap.raw")
        self._overlay = False
        """The disk is a qcow2 overlay on the host of the image's packed disk (a system guest on a lab host)."""
        self._copies: dict[Path, str] = {}
        try:
            self.uefi = self._firmware() if uefi else None
        except BaseException:
            if host is not LOCAL:
                host.remove_tree(self.workdir)
            raise

    def host_file(self, local: Path) -> str:
        """The host's path of a file of this machine's, copied there once per run at most."""
        if local not in self._copies:
            self._copies[local] = self.host.file_for(local)
        return self._copies[local]

    def _firmware(self) -> Uefi:
        """The firmware's code and the run's own copy of its blank variable store, where QEMU runs."""
        code, variables = Uefi.template(self.image.qemu_arch)
        store = self.run_dir.path / "efi-vars.fd"
        if self.host is LOCAL:
            shutil.copyfile(variables, store)
            return Uefi(code, store)
        on_host = posixpath.join(self.workdir, store.name)
        done = self.host.run(["cp", "--", self.host_file(variables), on_host])
        if done.returncode != 0:
            raise SetupError(f"cannot copy the UEFI variable store on {self.host.name}: {done.last_error_line()}")
        return Uefi(Path(self.host_file(code)), Path(on_host))

    def _qemu_img(self, *args: str, timeout: float = QEMU_IMG_SECONDS) -> str:
        done = self.host.run(["qemu-img", *args], timeout=timeout)
        if done.returncode != 0:
            raise SetupError(f"qemu-img {args[0]} failed on {self.host.name}: {done.last_error_line()}")
        return done.text()

    def prepare_disk(self, source: Path | None, command_line: str) -> None:
        """The run's own disk: a copy of the user's disk (format kept) or of the image's (a blank swap disk, or a
        system's GPT disk, whose EFI system partition then gets the boot loader and `command_line`)."""
        if source is None and self.image.is_system and self.host is not LOCAL:
            self._overlay_disk(command_line)
            return
        origin = self.host_file(source or self.image.swap_template)
        disk_format = json.loads(self._qemu_img("info", "-U", "--output=json", origin, timeout=60))["format"]
        self.disk = Disk(Path(self.workdir) / f"swap.{disk_format}", disk_format)
        self._qemu_img("convert", "-O", disk_format, "-S", "4k", origin, str(self.disk.path))
        if self.uefi is not None:
            if disk_format != "raw":
                raise UsageError(f"`firmware: uefi` needs a raw disk to write its boot entry into, not {disk_format}")
            install_boot_entry(self.disk.path, self.image, systemd_boot(self.image), command_line)

    def _overlay_disk(self, command_line: str) -> None:
        """A qcow2 overlay on the host of the image's packed disk; with UEFI, the EFI system partition, written
        here with the boot entry and the run's command line (mtools stamps the time: every run's differs), is
        sent into the run's directory there and written into the overlay."""
        template = self.image.swap_template
        packed = packed_disk(template, self.image.manifest["outputs"][template.name])
        self.disk = Disk(Path(self.workdir) / "swap.qcow2", "qcow2")
        self._qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", self.host_file(packed), str(self.disk.path))
        self._overlay = True
        if self.uefi is None:
            return
        offset, size = esp_partition(self.image)
        on_host = posixpath.join(self.workdir, "esp.raw")
        with tempfile.TemporaryDirectory(prefix="lab-esp-") as scratch:
            esp = Path(scratch) / "esp.raw"
            with template.open("rb") as disk, esp.open("wb") as partition:
                disk.seek(offset)
                for start in range(0, size, COPY_CHUNK):
                    partition.write(disk.read(min(COPY_CHUNK, size - start)))
            install_boot_entry(esp, self.image, systemd_boot(self.image), command_line, offset=0)
            self.host.put(esp, on_host)
        done = self.host.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {on_host} {offset} {size}",
                              str(self.disk.path)], timeout=ESP_WRITE_SECONDS)
        if done.returncode != 0 or f"wrote {size}/{size} bytes" not in done.text():
            raise SetupError(f"cannot write the EFI system partition into the run's disk on {self.host.name}: "
                             f"{done.last_error_line()}")
        self.host.run(["rm", "-f", "--", on_host])

    def collect(self) -> None:
        """Bring the run's files home from a lab host and clear its directory there: the variable store, a
        system's overlay as it is (rebased here onto the image's disk), any other disk compressed as qcow2."""
        if self.host is LOCAL:
            return
        home = self.run_dir.swap("qcow2")
        try:
            if self._overlay:
                self.host.fetch(str(self.disk.path), home)
                rebase_home(home, self.image.swap_template)
            else:
                packed = f"{self.workdir}/swap-final.qcow2"
                self._qemu_img("convert", "-c", "-O", "qcow2", str(self.disk.path), packed)
                self.host.fetch(packed, home)
            if self.uefi is not None:
                self.host.fetch(str(self.uefi.variables), self.run_dir.path / self.uefi.variables.name)
        finally:
            self.host.remove_tree(self.workdir)
