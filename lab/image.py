"""Guest images: built from Debian packages by name, cached by the resolved package versions.

An image is a directory holding the kernel Image, an initramfs (busybox, the lab's init,
the kernel modules the guest needs), a blank raw swap disk template and `manifest.json`,
which records every input and output with its sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from elftools.elf.elffile import ELFFile

from lab import initramfs
from lab.debian import PackageVersion, PrivateApt, sha256_file
from lab.errors import SetupError, UsageError
from lab.paths import IMAGES_DIR, cache_root

IMAGE_FORMAT = 1
DEFAULT_IMAGE = {"arm64": "debian-arm64", "amd64": "debian-amd64"}
_SCHEMA = json.loads((Path(__file__).parent / "schemas/image-recipe.json").read_text())
_QEMU_ARCH = {"arm64": "aarch64", "amd64": "x86_64"}


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
    init_script: Path = IMAGES_DIR / "init"

    @classmethod
    def load(cls, path: Path) -> ImageRecipe:
        try:
            data = yaml.safe_load(path.read_text())
            jsonschema.validate(data, _SCHEMA)
        except (OSError, yaml.YAMLError) as error:
            raise UsageError(f"cannot read image recipe {path}: {error}") from error
        except jsonschema.ValidationError as error:
            field = "/".join(str(part) for part in error.absolute_path) or "(top level)"
            raise UsageError(f"{path}: {field}: {error.message}") from error
        data["modules"] = tuple(data["modules"])
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
        return _QEMU_ARCH[self.arch]


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
        return self.manifest["name"]

    @property
    def arch(self) -> str:
        return self.manifest["arch"]

    @property
    def qemu_arch(self) -> str:
        return _QEMU_ARCH[self.arch]

    @property
    def kernel(self) -> Path:
        return self.kernel_file or self.path / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.initrd_file or self.path / "initramfs.cpio"

    @property
    def swap_template(self) -> Path:
        return self.path / "swap.raw"

    @property
    def kernel_append(self) -> str:
        return f"{self.manifest['kernel_append']} {self.extra_append}".strip()

    @property
    def kernel_release(self) -> str:
        return "user-given kernel" if self.kernel_file else self.manifest["kernel_release"]

    def boot_inputs(self) -> dict[str, dict[str, str]]:
        """What a run boots, with sha256: recorded in result.json so a run can be matched to its inputs."""
        return {role: {"path": str(path), "sha256": sha256_file(path)}
                for role, path in (("kernel", self.kernel), ("initramfs", self.initramfs))}


def _cache_key(recipe: ImageRecipe, packages: list[PackageVersion]) -> str:
    material = {
        "format": IMAGE_FORMAT,
        "recipe": {k: v for k, v in recipe.__dict__.items() if k != "init_script"},
        "packages": [p.spec for p in packages],
        "init": hashlib.sha256(recipe.init_script.read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _local_package(deb: Path, arch: str) -> PackageVersion:
    """A user's .deb file described like an archive package (name and version from its control file)."""
    if not deb.is_file():
        raise UsageError(f"no such kernel package: {deb}")
    done = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"{deb} is not a Debian package: {done.stderr.strip()}")
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    if fields.get("Architecture") != arch:
        raise UsageError(f"{deb} is for {fields.get('Architecture')}, the image is {arch}")
    return PackageVersion(fields["Package"], arch, fields["Version"], sha256_file(deb), deb.name)


def _extract(deb: Path, into: Path) -> None:
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()}")


def _module_depends(module: bytes) -> list[str]:
    """The `depends=` list from a module's .modinfo section."""
    with tempfile.TemporaryFile() as stream:
        stream.write(module)
        stream.seek(0)
        section = ELFFile(stream).get_section_by_name(".modinfo")
        if section is None:
            return []
        for field in section.data().split(b"\0"):
            if field.startswith(b"depends="):
                return [name.decode() for name in field[len(b"depends="):].split(b",") if name]
    return []


def _find_module(modules_root: Path, name: str) -> Path:
    wanted = name.replace("-", "_")
    for path in modules_root.rglob("*.ko*"):
        if path.name.split(".ko")[0].replace("-", "_") == wanted:
            return path
    raise SetupError(f"kernel module {name} is not in the kernel's modules package")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def collect_modules(modules_root: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """Named modules and their dependencies, decompressed, dependencies first."""
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        data = _module_bytes(_find_module(modules_root, key))
        for dependency in _module_depends(data):
            visit(dependency)
        ordered.append((key, data))

    for name in wanted:
        visit(name)
    return ordered


class ImageStore:
    """The image cache: `<cache>/images/<name>-<key>/`, one directory per resolved input set."""

    def __init__(self, root: Path | None = None) -> None:
        self.cache = root or cache_root()
        self.images = self.cache / "images"

    def apt_for(self, recipe: ImageRecipe) -> PrivateApt:
        return PrivateApt(self.cache / "apt" / recipe.arch, recipe.suite, recipe.arch)

    def list(self) -> list[GuestImage]:
        if not self.images.exists():
            return []
        found = [GuestImage.open(p) for p in self.images.iterdir() if (p / "manifest.json").exists()]
        return sorted(found, key=lambda image: image.manifest["built"], reverse=True)

    def latest(self, name: str, kernel_pin: str | None = None) -> GuestImage | None:
        """The newest build of recipe `name` (with its own kernel, or the pinned `NAME=VERSION` one)."""
        return next(
            (i for i in self.list() if i.name == name and i.manifest.get("kernel_pin") == kernel_pin), None
        )

    def resolve(self, recipe: ImageRecipe, refresh: bool = False) -> list[PackageVersion]:
        """The concrete kernel (binary and modules) and userland packages the recipe names today.

        `linux-image-cloud-ARCH` is a metapackage: follow it to the versioned linux-image package,
        then (kernels packaged since 7.x) to its linux-binary and linux-modules packages.
        """
        apt = self.apt_for(recipe)
        apt.update(force=refresh)
        name, version = recipe.kernel_package, recipe.kernel_version
        for _ in range(3):
            parts = [(n, v) for n, v in apt.depends(name, recipe.arch, version)
                     if n.startswith(("linux-image-", "linux-binary-", "linux-modules-"))]
            images = [(n, v) for n, v in parts if n.startswith("linux-image-")]
            if not images:
                break
            name, version = images[0]
        binaries = [(n, v) for n, v in parts if not n.startswith("linux-image-")]
        kernel = [apt.resolve(n, recipe.arch, v) for n, v in binaries] or [apt.resolve(name, recipe.arch, version)]
        return [*kernel, apt.resolve(recipe.userland_package, recipe.arch)]

    def build(
        self, recipe: ImageRecipe, refresh: bool = False, log: Callable[[str], None] = print,
        kernel_debs: tuple[Path, ...] = (),
    ) -> tuple[GuestImage, bool]:
        """Build (or find in the cache) the image for the recipe; True when it was built now.

        `kernel_debs` are the user's own kernel package files, used instead of the recipe's kernel.
        """
        apt = self.apt_for(recipe)
        if kernel_debs:
            apt.update(force=refresh)
            local = [(_local_package(deb, recipe.arch), deb) for deb in kernel_debs]
            packages = [p for p, _ in local] + [apt.resolve(recipe.userland_package, recipe.arch)]
            recipe = dataclasses.replace(recipe, kernel_package=local[0][0].name, kernel_version=local[0][0].version)
        else:
            local = []
            packages = self.resolve(recipe, refresh)
        key = _cache_key(recipe, packages)
        target = self.images / f"{recipe.name}-{key}"
        if (target / "manifest.json").exists():
            return GuestImage.open(target), False
        debs = list(local)
        for package in packages[len(local):]:
            log(f"fetching {package.spec}")
            debs.append((package, apt.download(package)))
        self.images.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=self.images))
        try:
            manifest = self._assemble(recipe, debs, staging, log)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return GuestImage.open(target), True

    def _assemble(
        self, recipe: ImageRecipe, debs: list[tuple[PackageVersion, Path]], out: Path, log: Callable[[str], None]
    ) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="lab-extract-") as scratch:
            root = Path(scratch)
            for _, deb in debs:
                _extract(deb, root)
            kernels = sorted(root.glob("usr/lib/modules/*/vmlinuz")) or sorted(root.glob("boot/vmlinuz-*"))
            if not kernels:
                raise SetupError("the kernel packages hold no vmlinuz")
            kernel = kernels[0]
            release = kernel.parent.name if kernel.name == "vmlinuz" else kernel.name[len("vmlinuz-"):]
            modules_root = next(
                (p for p in (root / "usr/lib/modules" / release, root / "lib/modules" / release) if p.is_dir()), None
            )
            if modules_root is None:
                raise SetupError(f"no modules for kernel {release} in the kernel packages")
            busybox = root / "usr/bin/busybox"
            if not busybox.exists():
                busybox = root / "bin/busybox"
            if not busybox.exists():
                raise SetupError(f"{recipe.userland_package} holds no busybox binary")
            log(f"assembling initramfs for {release}")
            shutil.copyfile(kernel, out / "vmlinuz")
            config = next((c for c in (modules_root / "config", root / f"boot/config-{release}") if c.exists()), None)
            if config is not None:
                shutil.copyfile(config, out / "config")
            modules = collect_modules(modules_root, recipe.modules)
            entries = [initramfs.directory(d) for d in
                       ("bin", "dev", "etc", "etc/lab", "lib", "lib/modules", "proc", "run", "sys", "tmp")]
            entries += [
                initramfs.char_device("dev/console", 5, 1),
                initramfs.regular_file("bin/busybox", busybox.read_bytes(), 0o755),
                initramfs.regular_file("init", recipe.init_script.read_bytes(), 0o755),
                initramfs.regular_file("etc/lab/modules", "".join(f"{n}\n" for n, _ in modules).encode()),
            ]
            entries += [initramfs.regular_file(f"lib/modules/{n}.ko", data) for n, data in modules]
            initramfs.write_newc_file(out / "initramfs.cpio", entries)
        with (out / "swap.raw").open("wb") as swap:
            swap.truncate(recipe.swap_size_mib << 20)
        outputs = ["vmlinuz", "initramfs.cpio", *(["config"] if (out / "config").exists() else [])]
        return {
            "format": IMAGE_FORMAT,
            "name": recipe.name,
            "arch": recipe.arch,
            "description": recipe.description,
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
            "kernel_release": release,
            "kernel_pin": recipe.kernel_version and f"{recipe.kernel_package}={recipe.kernel_version}",
            "kernel_append": recipe.kernel_append,
            "swap_size_mib": recipe.swap_size_mib,
            "modules": [name for name, _ in modules],
            "inputs": [
                {"package": p.name, "arch": p.arch, "version": p.version, "sha256": p.sha256} for p, _ in debs
            ] + [{"file": "images/init", "sha256": sha256_file(recipe.init_script)}],
            "outputs": {name: sha256_file(out / name) for name in outputs},
        }
