"""A built image: its directory and `manifest.json`, optionally booted with a user's kernel, initrd or arguments.

The directory holds the kernel Image, an initramfs (busybox, the lab's init, the kernel modules
the guest needs), a blank raw swap disk template and the manifest, which records every input and
output with its sha256. An image with an SSH server also holds the private half of the client key
its server accepts, and the server's public host key is in the manifest, so the lab can pin it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.digest import sha256_file
from lab.errors import SetupError, UsageError
from lab.vocabulary import ImageOn, InitramfsGenerator, ResumeFrom, guest_arch

SYSTEM_KIND = "system"
SWAP_DISK_DEVICE = "/dev/vda"
"""The busybox guests' swap disk: the whole of the run's one disk."""


@dataclass(frozen=True, kw_only=True)
class SwapArea:
    """Where a run's hibernation image goes: in the disk file (for the host's disk witness and header
    edits) and in the guest (a block device and a byte offset in it, for the guest's own look)."""

    image_on: ImageOn
    disk_offset: int = 0
    """Bytes from the start of the run's disk to the area's first page."""
    size: int | None = None
    """The area's size in bytes; None: the whole disk."""
    guest_device: str
    guest_offset: int = 0
    resume_arguments: tuple[str, ...] = ()
    """What names this area on a kernel command line (`resume=`, and `resume_offset=` for a file)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"resume_arguments": list(self.resume_arguments)}


@dataclass(frozen=True)
class SshLogin:
    """How the lab logs in to an image's SSH server: the pinned host key and the image's own client key."""

    user: str
    host_key: str
    client_key: Path


@dataclass(frozen=True)
class GuestImage:
    """A built image directory and its manifest, optionally with a user's kernel, initrd or arguments."""

    path: Path
    manifest: dict[str, Any]
    kernel_file: Path | None = None
    initrd_file: Path | None = None
    extra_append: str = ""

    @classmethod
    def open(cls, path: Path) -> GuestImage:
        manifest_path = path / "manifest.json"
        try:
            return cls(path, json.loads(manifest_path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise SetupError(f"{path} is not a built guest image: {error}") from error

    def with_overrides(self, kernel: Path | None, initrd: Path | None, append: str | None) -> GuestImage:
        """The same image booted with the user's own kernel, initramfs or extra kernel arguments."""
        for given in (kernel, initrd):
            if given is not None and not given.is_file():
                raise UsageError(f"no such file: {given}")
        return dataclasses.replace(self, kernel_file=kernel, initrd_file=initrd, extra_append=append or "")

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def is_system(self) -> bool:
        """A whole system on a GPT disk (systemd, its own initramfs), not a busybox initramfs guest."""
        return self.manifest.get("kind") == SYSTEM_KIND

    def swap_area(self, image_on: ImageOn = ImageOn.PARTITION) -> SwapArea:
        """The swap area a run writes its image to; a busybox guest has one, its whole swap disk."""
        if not self.is_system:
            if image_on is not ImageOn.PARTITION:
                raise UsageError(f"image {self.name} has no swap file: `image_on: {image_on}` needs a system image")
            return SwapArea(image_on=image_on, guest_device=SWAP_DISK_DEVICE)
        system = self.manifest["system"]
        partitions = {p["label"]: p for p in system["partitions"]}
        if image_on is ImageOn.FILE:
            swap_file = system["swap_file"]
            root = partitions[swap_file["partition"]]
            return SwapArea(
                image_on=image_on, disk_offset=swap_file["offset"], size=swap_file["size"],
                guest_device=f"/dev/disk/by-partuuid/{root['uuid']}", guest_offset=swap_file["offset"] - root["offset"],
                resume_arguments=(f"resume=PARTUUID={root['uuid']}", f"resume_offset={swap_file['resume_offset']}"),
            )
        swap = partitions["lab-swap"]
        return SwapArea(image_on=image_on, disk_offset=swap["offset"], size=swap["size"],
                        guest_device=f"/dev/disk/by-partuuid/{swap['uuid']}",
                        resume_arguments=(f"resume=PARTUUID={swap['uuid']}",))

    def boot_arguments(self, area: SwapArea, resume_from: ResumeFrom) -> str:
        """What a boot adds to the kernel command line: which swap area the guest turns on, and (with
        `resume_from: cmdline`) where the resuming kernel finds the image."""
        if not self.is_system:
            return "lab.swap=vda"
        resume = area.resume_arguments if resume_from is ResumeFrom.CMDLINE else ()
        return " ".join((f"lab.swap={area.image_on}", *resume))

    def require_resume_path(self, area: SwapArea, resume_from: ResumeFrom, uefi: bool = False) -> None:
        """Refuse, before anything boots, a resume path this image (booted this way) cannot take."""
        if not self.is_system:
            if resume_from is not ResumeFrom.CMDLINE:
                raise UsageError(f"image {self.name} resumes through the lab's own init: `resume_from: {resume_from}` "
                                 "needs a system image")
            return
        generator = self.manifest["system"]["initramfs_generator"]
        if resume_from is ResumeFrom.EFI_VARIABLE:
            if not uefi:
                raise UsageError("`resume_from: efi-variable` needs UEFI (firmware: uefi): systemd keeps "
                                 "HibernateLocation in an EFI variable")
            if generator != InitramfsGenerator.DRACUT:
                raise UsageError(f"`resume_from: efi-variable` needs systemd in the initrd; image {self.name}'s "
                                 f"{generator} initramfs has none (use debian-{self.arch}-system-dracut)")
        if resume_from is ResumeFrom.INITRAMFS and generator != InitramfsGenerator.INITRAMFS_TOOLS:
            raise UsageError(f"`resume_from: initramfs` is initramfs-tools' RESUME=; image {self.name}'s initramfs "
                             f"is made by {generator}")
        if resume_from is ResumeFrom.INITRAMFS and area.image_on is ImageOn.FILE:
            raise UsageError(f"image {self.name}'s {generator} initramfs is set to resume from the swap partition "
                             "(RESUME=); a swap file needs `resume_from: cmdline`")

    @property
    def arch(self) -> str:
        return str(self.manifest["arch"])

    @property
    def kernel_pin(self) -> str | None:
        """`linux-image-…=VERSION` when built with a pinned kernel (`--kernel-deb`); None: the recipe's own."""
        pin = self.manifest.get("kernel_pin")
        return str(pin) if pin else None

    def describe_use(self, picked: bool) -> str:
        """What runs do with this build: boot it by default, boot it when asked for its kernel, or neither."""
        if self.kernel_pin:
            return f"pinned to {self.kernel_pin}: runs with --kernel-deb {self.kernel_pin}"
        return "runs pick this" if picked else "an older build"

    @property
    def qemu_arch(self) -> str:
        return guest_arch(self.arch).qemu

    @property
    def kernel(self) -> Path:
        return self.kernel_file or self.path / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.initrd_file or self.path / ("initrd.img" if self.is_system else "initramfs.cpio")

    @property
    def swap_template(self) -> Path:
        """The disk a run starts from: a blank swap disk, or a system image's whole GPT disk."""
        return self.path / ("disk.raw" if self.is_system else "swap.raw")

    @property
    def kernel_append(self) -> str:
        return f"{self.manifest['kernel_append']} {self.extra_append}".strip()

    @property
    def ssh(self) -> SshLogin | None:
        """None when the image has no SSH server, or when a user's initramfs replaces the image's."""
        server = self.manifest.get("ssh")
        if server is None or self.initrd_file is not None:
            return None
        return SshLogin(server["user"], server["host_key"], self.path / server["client_key"])

    @property
    def kernel_release(self) -> str:
        return "user-given kernel" if self.kernel_file else self.manifest["kernel_release"]

    def boot_inputs(self) -> dict[str, dict[str, str]]:
        """What a run boots, with sha256: recorded in result.json so a run can be matched to its inputs."""
        return {role: {"path": str(path), "sha256": sha256_file(path)}
                for role, path in (("kernel", self.kernel), ("initramfs", self.initramfs))}
