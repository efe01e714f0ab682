"""System image recipes: a whole Debian system on a GPT disk, as read from `images/NAME.yaml` (`kind: system`).

A system image is what hibernation bug reports run: systemd, udev, D-Bus, initramfs-tools and
Debian's cloud kernel, with an EFI system partition, an ext4 root that also holds a swap file,
and a swap partition. Its recipe names the packages and the disk's sizes; the lab's own duties in
the guest (readiness mark, console shell, which swap area is on) are units in `images/system/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.errors import UsageError
from lab.image.guest_image import SYSTEM_KIND
from lab.paths import IMAGES_DIR, load_schema
from lab.vocabulary import InitramfsGenerator, guest_arch
from lab.yaml_file import read_yaml

SYSTEM_FILES_DIR = IMAGES_DIR / "system"
"""The lab's units and scripts installed into every system image (hashed into its cache key)."""
_SCHEMA = load_schema("system-recipe")


@dataclass(frozen=True, kw_only=True)
class DiskSizes:
    """The sizes, in MiB, of the system disk's partitions and of the swap file in its root."""

    esp_mib: int
    root_mib: int
    swap_partition_mib: int
    swap_file_mib: int


@dataclass(frozen=True, kw_only=True)
class SystemRecipe:
    """What a system image is made of."""

    name: str
    arch: str
    suite: str
    kernel_package: str
    packages: tuple[str, ...]
    disk: DiskSizes
    kernel_append: str
    description: str = ""
    initramfs_generator: InitramfsGenerator = InitramfsGenerator.INITRAMFS_TOOLS

    @classmethod
    def load(cls, path: Path) -> SystemRecipe:
        file = read_yaml(path, "system image recipe")
        file.validate(_SCHEMA)
        data = dict(file.data)
        data.pop("kind")
        data["packages"] = tuple(data["packages"])
        data["disk"] = DiskSizes(**data["disk"])
        generator = data["initramfs_generator"] = InitramfsGenerator(
            data.get("initramfs_generator", InitramfsGenerator.INITRAMFS_TOOLS))
        if generator not in data["packages"]:
            raise file.error(("packages",), f"the initramfs generator {generator} is not among the packages")
        return cls(**data)

    @classmethod
    def named(cls, name: str) -> SystemRecipe:
        if not is_system_recipe(name):
            raise UsageError(f"{name!r} is not a system image recipe (those have `kind: system` in images/)")
        return cls.load(IMAGES_DIR / f"{name}.yaml")

    @property
    def qemu_arch(self) -> str:
        return guest_arch(self.arch).qemu


def is_system_recipe(name: str) -> bool:
    """Whether `images/NAME.yaml` is a system recipe (read without validating: the loader validates)."""
    path = IMAGES_DIR / f"{name}.yaml"
    if "/" in name or not path.is_file():
        return False
    try:
        data = read_yaml(path, "image recipe").data
    except UsageError:
        return False
    return isinstance(data, dict) and data.get("kind") == SYSTEM_KIND
