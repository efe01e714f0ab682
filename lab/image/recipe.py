"""Image recipes: what an image is made of, as read (and validated) from `images/NAME.yaml`."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from lab.errors import UsageError
from lab.paths import IMAGES_DIR, load_schema
from lab.vocabulary import GUEST_ARCHES, guest_arch
from lab.yaml_file import read_yaml

DEFAULT_KERNEL = "default"
"""The kernel an image recipe names itself, as opposed to one pinned by version."""
DEFAULT_IMAGE = {arch.debian: f"debian-{arch.debian}" for arch in GUEST_ARCHES}
DEFAULT_SYSTEM_IMAGE = {arch.debian: f"debian-{arch.debian}-system" for arch in GUEST_ARCHES}
"""The image a `guest: system` scenario boots on each arch."""
_SCHEMA = load_schema("image-recipe")
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
"""An image's name: it names a recipe file and the image's cache directory."""
KERNEL_DEB = re.compile(r"linux-image-[a-z0-9][a-z0-9+.-]*=[A-Za-z0-9.+~:-]+")
"""A Debian kernel package and version, in Debian's own characters (as a matrix's `kernels` has them)."""


class ImageRole(StrEnum):
    """What an image is for."""

    GUEST = "guest"
    """Boots under a lab run."""
    KVM_HOST = "kvm-host"
    """A machine the lab runs its guests' QEMU on."""


@dataclass(frozen=True)
class ImageRecipe:
    """What an image is made of, as read from `images/NAME.yaml`."""

    name: str
    arch: str
    suite: str
    kernel_package: str
    userland_package: str
    modules: tuple[str, ...]
    swap_size_mib: int
    kernel_append: str
    description: str = ""
    kernel_version: str | None = None
    extra_packages: tuple[str, ...] = ()
    ssh_server: str | None = None
    role: ImageRole = ImageRole.GUEST
    programs: tuple[str, ...] = ()
    """Guest paths of dynamically linked programs from the packages, shipped with their library closure."""
    qemu_builds: tuple[str, ...] = ()
    """Targets of the lab's patched QEMU (`lab qemu build --target`) installed under /opt/lab-qemu."""
    guest_images: tuple[str, ...] = ()
    """Built images carried under /var/lib/lab/images/NAME and pre-seeded in the host's file cache."""
    init_script: Path = IMAGES_DIR / "init"

    @classmethod
    def load(cls, path: Path) -> ImageRecipe:
        file = read_yaml(path, "image recipe")
        file.validate(_SCHEMA)
        data = file.data
        for name in ("modules", "extra_packages", "programs", "qemu_builds", "guest_images"):
            if name in data:
                data[name] = tuple(data[name])
        if "role" in data:
            data["role"] = ImageRole(data["role"])
        return cls(**data)

    def pinned(self, kernel_deb: str) -> ImageRecipe:
        """This recipe with its kernel replaced by `linux-image-…=VERSION` (a bug report's exact kernel)."""
        package, _, version = kernel_deb.partition("=")
        if not KERNEL_DEB.fullmatch(kernel_deb):
            raise UsageError(f"--kernel-deb wants linux-image-…=VERSION, got {kernel_deb!r}")
        return dataclasses.replace(self, kernel_package=package, kernel_version=version)

    @classmethod
    def named(cls, name: str) -> ImageRecipe:
        """The shipped recipe `name`; a name that is no recipe's (`../x`, a path) is never looked up."""
        from lab.image.system_recipe import is_system_recipe

        path = IMAGES_DIR / f"{name}.yaml"
        if NAME.fullmatch(name) and is_system_recipe(name):
            raise UsageError(f"{name} is a system image: it is built with `lab images build {name}` and boots with "
                             "its own kernel (no --kernel-deb, no lab host payload)")
        if not NAME.fullmatch(name) or not path.exists():
            known = ", ".join(sorted(p.stem for p in IMAGES_DIR.glob("*.yaml")))
            raise UsageError(f"no image recipe named {name!r} (known: {known})")
        return cls.load(path)

    @property
    def qemu_arch(self) -> str:
        return guest_arch(self.arch).qemu
