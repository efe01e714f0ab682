"""UEFI boot of a system image: systemd-boot and a loader entry on the run's copy of the EFI system partition.

The boot loader is Debian's own (`systemd-boot-efi`, the version of the image's systemd), fetched
through the lab's private apt and checked against the archive's sha256. It is written, with the
kernel, the initramfs and a Boot Loader Specification entry carrying the run's kernel command line,
into the FAT of the run's disk with mtools at the partition's offset: no mount, no loop device, and
the cached image stays untouched. Firmware with an empty variable store finds it at the removable
media path (EFI/BOOT/BOOTAA64.EFI, BOOTX64.EFI).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lab.errors import SetupError
from lab.image.debian import PrivateApt, extract
from lab.image.gpt import run_tool
from lab.image.guest_image import GuestImage
from lab.image.system_recipe import SystemRecipe
from lab.paths import cache_root

BOOT_LOADER_PACKAGE = "systemd-boot-efi"
EFI_NAMES = {"arm64": ("systemd-bootaa64.efi", "BOOTAA64.EFI"), "amd64": ("systemd-bootx64.efi", "BOOTX64.EFI")}
ENTRY = "lab.conf"
MTOOLS = {"MTOOLS_SKIP_CHECK": "1"}
"""mtools on a partition inside a disk file: its geometry is not a floppy's, which mtools would refuse."""


def systemd_boot(image: GuestImage) -> Path:
    """The systemd-boot EFI binary matching the image's systemd, fetched once and kept in the lab's cache."""
    version = image.manifest.get("packages", {}).get("systemd")
    if version is None:
        raise SetupError(f"image {image.name} records no systemd version: rebuild it with `lab images build`")
    source_name, _ = EFI_NAMES[image.arch]
    cached = cache_root() / "boot-loaders" / f"{source_name}-{version}"
    if cached.is_file():
        return cached
    apt = PrivateApt(cache_root() / "apt" / image.arch, SystemRecipe.named(image.name).suite, image.arch)
    apt.update()
    (candidate,) = apt.show([(BOOT_LOADER_PACKAGE, version)], image.arch)
    deb = apt.download(candidate.package)
    with tempfile.TemporaryDirectory(prefix="lab-boot-loader-") as scratch:
        extract(deb, Path(scratch))
        found = Path(scratch) / "usr/lib/systemd/boot/efi" / source_name
        if not found.is_file():
            raise SetupError(f"{deb.name} holds no {source_name}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(found, staging)
        staging.replace(cached)
    return cached


def esp_partition(image: GuestImage) -> tuple[int, int]:
    """Where the EFI system partition lies in the image's disk: (offset, size) in bytes."""
    esp = next(p for p in image.manifest["system"]["partitions"] if p["label"] == "lab-esp")
    return int(esp["offset"]), int(esp["size"])


def install_boot_entry(disk: Path, image: GuestImage, loader: Path, cmdline: str, offset: int | None = None) -> None:
    """systemd-boot, the image's kernel and initramfs, and one entry booting them with `cmdline`, written
    into the EFI system partition of `disk`: a raw copy of the image's disk, or of its partition alone
    (`offset` 0)."""
    target = f"{disk}@@{esp_partition(image)[0] if offset is None else offset}"
    _, removable_name = EFI_NAMES[image.arch]
    run_tool("mmd", "-i", target, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries", env=MTOOLS)
    with tempfile.TemporaryDirectory(prefix="lab-esp-") as scratch:
        loader_conf = Path(scratch) / "loader.conf"
        loader_conf.write_text(f"timeout 0\ndefault {ENTRY}\neditor no\n")
        entry = Path(scratch) / ENTRY
        entry.write_text(f"title {image.name} ({image.kernel_release})\nlinux /vmlinuz\ninitrd /initrd.img\n"
                         f"options {cmdline}\n")
        for source, destination in ((loader, f"::/EFI/BOOT/{removable_name}"), (image.kernel, "::/vmlinuz"),
                                    (image.initramfs, "::/initrd.img"), (loader_conf, "::/loader/loader.conf"),
                                    (entry, f"::/loader/entries/{ENTRY}")):
            run_tool("mcopy", "-o", "-i", target, str(source), destination, env=MTOOLS)
