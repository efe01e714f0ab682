"""Image recipes: what an image is made of, as read (and validated) from `images/NAME.yaml`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from lab.errors import UsageError
from lab.paths import IMAGES_DIR, load_schema
from lab.vocabulary import GUEST_ARCHES, guest_arch
from lab.yaml_file import read_yaml

DEFAULT_KERNEL = "default"
"""The kernel an image recipe names itself, as opposed to one pinned by version."""
DEFAULT_IMAGE = {arch.debian: f"debian-{arch.debian}" for arch in GUEST_ARCHES}
_SCHEMA = load_schema("image-recipe")


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
    init_script: Path = IMAGES_DIR / "init"

    @classmethod
    def load(cls, path: Path) -> ImageRecipe:
        file = read_yaml(path, "image recipe")
        file.validate(_SCHEMA)
        data = file.data
        data["modules"] = tuple(data["modules"])
        data["extra_packages"] = tuple(data.get("extra_packages", ()))
        return cls(**data)

    def pinned(self, kernel_deb: str) -> ImageRecipe:
        """This recipe with its kernel replaced by `linux-image-…=VERSION` (a bug report's exact kernel)."""
        package, _, version = kernel_deb.partition("=")
        if not package.startswith("linux-image-") or not version:
            raise UsageError(f"--kernel-deb wants linux-image-…=VERSION, got {kernel_deb!r}")
        return dataclasses.replace(self, kernel_package=package, kernel_version=version)

    @classmethod
    def named(cls, name: str) -> ImageRecipe:
        path = IMAGES_DIR / f"{name}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in IMAGES_DIR.glob("*.yaml")))
            raise UsageError(f"no image recipe named {name!r} (known: {known})")
        return cls.load(path)

    @property
    def qemu_arch(self) -> str:
        return guest_arch(self.arch).qemu
