"""The image cache: images built from Debian packages by name, cached by the resolved package versions.

`ImageStore` resolves a recipe's packages through the private apt, builds (or finds in the cache)
the image directory and assembles its initramfs; `find_image` is the one way runs, matrices and
the pytest plugin find the image to boot.

Resolving takes apt-cache about ten seconds per arch, so each resolution is recorded in the cache
(`resolutions/`) with its time, and a warm build reads it and finds its image without running apt.
A recorded resolution is used again until `--refresh`, until apt's package lists change, or until it
is older than `LAB_RESOLUTION_MAX_AGE` (default a week).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.digest import sha256_file
from lab.errors import SetupError, UsageError
from lab.image import initramfs
from lab.image.build_locks import build_lock
from lab.image.debian import PackageVersion, PrivateApt, extract, local_package
from lab.image.guest_image import GuestImage
from lab.image.payload import FILE_CACHE, IMAGES_ROOT, ROLE_FILE, RUNS_ROOT, Payload, payload, payload_entries
from lab.image.recipe import DEFAULT_KERNEL, ImageRecipe, ImageRole
from lab.paths import cache_root

IMAGE_FORMAT = 1
KERNEL_PACKAGE_PREFIXES = ("linux-image-", "linux-binary-", "linux-modules-")
BASE_DIRECTORIES = ("bin", "dev", "etc", "etc/lab", "lib", "lib/modules", "proc", "run", "sys", "tmp")
LATER_FIELDS = {"role": ImageRole.GUEST, "programs": (), "qemu_builds": (), "guest_images": ()}
"""Recipe fields added after images were first cached: left out of the key while unused, so those keys stay."""
QemuBuilder = Callable[[str], Path]
"""Builds (or finds built) the lab's patched QEMU for a target of `lab qemu build`; the binary's path."""
RESOLUTION_FORMAT = 1
"""Bumped when `resolve` would find other packages from the same lists: older records are then ignored."""
MAX_AGE_VARIABLE = "LAB_RESOLUTION_MAX_AGE"
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 24 * 3600}


def resolution_max_age() -> float:
    """Seconds a recorded resolution stays good: `$LAB_RESOLUTION_MAX_AGE` as `3600`, `90m`, `12h` or `7d`."""
    given = os.environ.get(MAX_AGE_VARIABLE, "").strip()
    if not given:
        return DEFAULT_MAX_AGE_SECONDS
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", given)
    if match is None:
        raise UsageError(f"{MAX_AGE_VARIABLE}={given!r}: want seconds, or a number with s, m, h or d (e.g. 7d)")
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]


def _recipe_fields(recipe: ImageRecipe) -> dict[str, Any]:
    """The recipe as keys see it: its init script aside, and the later fields left out while unused."""
    return {k: v for k, v in recipe.__dict__.items()
            if k != "init_script" and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def _cache_key(recipe: ImageRecipe, packages: list[PackageVersion], carried: Payload | None = None) -> str:
    material = {
        "format": IMAGE_FORMAT,
        "recipe": _recipe_fields(recipe),
        "packages": [p.spec for p in packages],
        "init": hashlib.sha256(recipe.init_script.read_bytes()).hexdigest(),
    }
    if carried is not None and carried.files:
        material["carried"] = carried.key()
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


class ImageStore:
    """The image cache: `<cache>/images/<name>-<key>/`, one directory per resolved input set."""

    def __init__(self, root: Path | None = None) -> None:
        self.cache = root or cache_root()
        self.images = self.cache / "images"
        self.resolutions = self.cache / "resolutions"

    def apt_for(self, recipe: ImageRecipe) -> PrivateApt:
        return PrivateApt(self.cache / "apt" / recipe.arch, recipe.suite, recipe.arch)

    def cached(self) -> list[GuestImage]:
        if not self.images.exists():
            return []
        found = [GuestImage.open(p) for p in self.images.iterdir() if (p / "manifest.json").exists()]
        return sorted(found, key=lambda image: image.manifest["built"], reverse=True)

    def latest(self, name: str, kernel_pin: str | None = None) -> GuestImage | None:
        """The newest build of recipe `name` (with its own kernel, or the pinned `NAME=VERSION` one)."""
        return next(
            (i for i in self.cached() if i.name == name and i.kernel_pin == kernel_pin), None
        )

    def resolve(self, apt: PrivateApt, recipe: ImageRecipe) -> list[PackageVersion]:
        """The concrete kernel (binary and modules) and userland packages the recipe names in apt's lists.

        `linux-image-cloud-ARCH` is a metapackage: follow it to the versioned linux-image package,
        then (kernels packaged since 7.x) to its linux-binary and linux-modules packages.
        """
        (kernel,) = apt.show([(recipe.kernel_package, recipe.kernel_version)], recipe.arch)
        for _ in range(3):
            parts = [(n, v) for n, v in kernel.depends if n.startswith(KERNEL_PACKAGE_PREFIXES)]
            images = [part for part in parts if part[0].startswith("linux-image-")]
            if not images:
                break
            (kernel,) = apt.show(images[:1], recipe.arch)
        binaries = [part for part in parts if not part[0].startswith("linux-image-")]
        kernel_packages = [c.package for c in apt.show(binaries, recipe.arch)] if binaries else [kernel.package]
        return [*kernel_packages, *self.userland(apt, recipe)]

    def userland(self, apt: PrivateApt, recipe: ImageRecipe) -> list[PackageVersion]:
        """The userland package, then each extra package with everything it depends on, transitively.

        All of them are inputs of the image (and of its cache key), even those whose files the
        initramfs ends up not needing: the build takes from them what the ELF files load.
        """
        found = [c.package for c in apt.show([(recipe.userland_package, None)], recipe.arch)]
        seen: set[str] = set()
        level: list[tuple[str, str | None]] = [(name, None) for name in recipe.extra_packages]
        while level:
            fresh = list({name: version for name, version in level if name not in seen}.items())
            if not fresh:
                break
            seen.update(name for name, _ in fresh)
            candidates = apt.show(fresh, recipe.arch)
            found += [c.package for c in candidates]
            level = [dependency for c in candidates for dependency in c.depends]
        return found

    def build(
        self, recipe: ImageRecipe, refresh: bool = False, log: Callable[[str], None] = print,
        kernel_debs: tuple[Path, ...] = (), qemu_builder: QemuBuilder | None = None,
    ) -> tuple[GuestImage, bool]:
        """Build (or find in the cache) the image for the recipe; True when it was built now.

        `kernel_debs` are the user's own kernel package files, used instead of the recipe's kernel.
        `qemu_builder` provides the recipe's `qemu_builds` (the image layer cannot build QEMU itself).
        Packages are resolved first, so a kernel Debian does not serve fails in seconds; what the
        image carries from the build host comes next, outside the build lock, which a QEMU build
        (a quarter of an hour) would otherwise hold from every other image build.
        """
        with build_lock(self.cache):
            recipe, local, packages = self._inputs(recipe, refresh, kernel_debs)
        carried = self.payload(recipe, qemu_builder)
        with build_lock(self.cache):
            return self._build(recipe, local, packages, log, carried)

    def payload(self, recipe: ImageRecipe, qemu_builder: QemuBuilder | None = None) -> Payload:
        """The QEMU builds (built now if missing) and the newest builds of the guest images the recipe carries."""
        binaries = {}
        for target in recipe.qemu_builds:
            if qemu_builder is None:
                raise SetupError(f"image {recipe.name} carries the lab's QEMU build for {target}: "
                                 f"build it with `lab host build {recipe.name}`")
            binaries[target] = qemu_builder(target)
        images = []
        for name in recipe.guest_images:
            image = self.latest(name)
            if image is None:
                raise SetupError(f"image {recipe.name} carries guest image {name}, which is not built: "
                                 f"run `lab images build {name}`")
            if image.arch != recipe.arch:
                raise UsageError(f"image {recipe.name} ({recipe.arch}) cannot carry guest image {name} ({image.arch})")
            images.append(image)
        return payload(binaries, images)

    def _inputs(
        self, recipe: ImageRecipe, refresh: bool, kernel_debs: tuple[Path, ...]
    ) -> tuple[ImageRecipe, list[tuple[PackageVersion, Path]], list[PackageVersion]]:
        """The recipe (with the user's kernel package, if given), the user's .deb files, every package."""
        local = [(local_package(deb, recipe.arch), deb) for deb in kernel_debs]
        if local:
            recipe = dataclasses.replace(recipe, kernel_package=local[0][0].name, kernel_version=local[0][0].version)
        return recipe, local, self._packages(recipe, [p for p, _ in local], refresh)

    def _packages(self, recipe: ImageRecipe, local: list[PackageVersion], refresh: bool) -> list[PackageVersion]:
        """The recorded resolution while it holds, else the packages resolved now through apt (and recorded)."""
        apt = self.apt_for(recipe)
        record = self.resolutions / f"{recipe.name}-{_resolution_key(recipe, local)}.json"
        lists = apt.lists_updated()
        recorded = None if refresh else _recorded_packages(record, lists)
        if recorded is not None:
            return recorded
        if apt.update(force=refresh):
            lists = apt.lists_updated()
        packages = [*local, *self.userland(apt, recipe)] if local else self.resolve(apt, recipe)
        _record_packages(record, recipe, packages, lists)
        return packages

    def _build(
        self, recipe: ImageRecipe, local: list[tuple[PackageVersion, Path]], packages: list[PackageVersion],
        log: Callable[[str], None], carried: Payload,
    ) -> tuple[GuestImage, bool]:
        key = _cache_key(recipe, packages, carried)
        target = self.images / f"{recipe.name}-{key}"
        if (target / "manifest.json").exists():
            cached = GuestImage.open(target)
            damaged = cached.damage()
            if not damaged:
                return cached, False
            log(f"rebuilding {recipe.name}: the cached image does not match its manifest ({'; '.join(damaged)})")
            shutil.rmtree(target)
        apt = self.apt_for(recipe)
        apt.update()
        debs = list(local)
        for package in packages[len(local):]:
            log(f"fetching {package.spec}")
            debs.append((package, apt.download(package)))
        self.images.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=self.images))
        try:
            manifest = self._assemble(recipe, debs, staging, log, carried)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return GuestImage.open(target), True

    def _assemble(
        self, recipe: ImageRecipe, debs: list[tuple[PackageVersion, Path]], out: Path, log: Callable[[str], None],
        carried: Payload,
    ) -> dict[str, Any]:
        from lab.image.closure import program_closure  # ELF reading and keys: a cache hit needs neither
        from lab.image.keys import CLIENT_KEY, ssh_server
        from lab.image.modules import collect_modules

        with tempfile.TemporaryDirectory(prefix="lab-extract-") as scratch:
            root = Path(scratch)
            for _, deb in debs:
                extract(deb, root)
            kernel, release, modules_root, busybox = _unpacked_parts(root, recipe)
            log(f"assembling initramfs for {release}")
            shutil.copyfile(kernel, out / "vmlinuz")
            config = next((c for c in (modules_root / "config", root / f"boot/config-{release}") if c.exists()), None)
            if config is not None:
                shutil.copyfile(config, out / "config")
            modules = collect_modules(modules_root, recipe.modules)
            ssh_entries, ssh = ssh_server(root, recipe, out, BASE_DIRECTORIES) if recipe.ssh_server else ([], None)
            entries = [initramfs.directory(d) for d in BASE_DIRECTORIES]
            entries += [
                initramfs.char_device("dev/console", 5, 1),
                initramfs.regular_file("bin/busybox", busybox.read_bytes(), 0o755),
                initramfs.regular_file("init", recipe.init_script.read_bytes(), 0o755),
                initramfs.regular_file("etc/lab/modules", "".join(f"{n}\n" for n, _ in modules).encode()),
            ]
            entries += [initramfs.regular_file(f"lib/modules/{n}.ko", data) for n, data in modules]
            entries += ssh_entries
            programs = {path: program_closure(root, path, recipe.arch) for path in recipe.programs}
            entries += _program_entries(programs, entries)
            if recipe.role is not ImageRole.GUEST:
                entries.append(initramfs.regular_file(ROLE_FILE, f"{recipe.role}\n".encode()))
            entries += payload_entries(carried.files, {e.path for e in entries if stat.S_ISDIR(e.mode)})
            initramfs.write_newc_file(out / "initramfs.cpio", entries)
        with (out / "swap.raw").open("wb") as swap:
            swap.truncate(recipe.swap_size_mib << 20)
        outputs = ["vmlinuz", "initramfs.cpio", *(name for name in ("config", CLIENT_KEY) if (out / name).exists())]
        manifest = {
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
            "ssh": ssh,
            "inputs": _inputs(recipe, debs, carried),
            "outputs": {name: sha256_file(out / name) for name in outputs},
            "role": recipe.role,
        }
        if programs:
            manifest["programs"] = {f"/{path.lstrip('/')}": sorted(files) for path, files in programs.items()}
        manifest |= carried.manifest
        if recipe.role is not ImageRole.GUEST:
            manifest["layout"] = {"file_cache": f"/{FILE_CACHE}", "images": f"/{IMAGES_ROOT}", "runs": f"/{RUNS_ROOT}"}
        return manifest


def _inputs(recipe: ImageRecipe, debs: list[tuple[PackageVersion, Path]], carried: Payload) -> list[dict[str, str]]:
    """Every input of an image with its sha256: the packages, the init script, the files it carries."""
    return ([{"package": p.name, "arch": p.arch, "version": p.version, "sha256": p.sha256} for p, _ in debs]
            + [{"file": "images/init", "sha256": sha256_file(recipe.init_script)}]
            + [{"file": str(f.source), "sha256": f.sha256} for f in carried.files])


def _unpacked_parts(root: Path, recipe: ImageRecipe) -> tuple[Path, str, Path, Path]:
    """In the unpacked packages: the kernel, its release, its modules' directory and busybox."""
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
    return kernel, release, modules_root, busybox


def _program_entries(programs: dict[str, dict[str, bytes]], entries: list[initramfs.Entry]) -> list[initramfs.Entry]:
    """The recipe's programs and their libraries, each file once (dropbear may already bring libc)."""
    present = {e.path for e in entries}
    files = {path: data for closure in programs.values() for path, data in closure.items() if path not in present}
    directories = {e.path for e in entries if stat.S_ISDIR(e.mode)}
    return [*(initramfs.directory(d) for d in initramfs.parent_directories(files, directories)),
            *(initramfs.regular_file(path, data, 0o755) for path, data in sorted(files.items()))]


def _resolution_key(recipe: ImageRecipe, local: list[PackageVersion]) -> str:
    """What a resolution depends on: the recipe as written (its init script aside) and the user's kernel files."""
    material = {
        "format": RESOLUTION_FORMAT,
        "recipe": _recipe_fields(recipe),
        "local": [[p.spec, p.sha256] for p in local],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _recorded_packages(record: Path, lists: int | None) -> list[PackageVersion] | None:
    """The packages of a recorded resolution made from these same package lists within the maximum age."""
    max_age = resolution_max_age()
    try:
        data = json.loads(record.read_text())
        resolved = datetime.fromisoformat(data["resolved"])
        packages = [PackageVersion(**fields) for fields in data["packages"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("format") != RESOLUTION_FORMAT or data.get("lists") != lists or lists is None:
        return None
    if (datetime.now(UTC) - resolved).total_seconds() > max_age:
        return None
    return packages


def _record_packages(record: Path, recipe: ImageRecipe, packages: list[PackageVersion], lists: int | None) -> None:
    """Written atomically: concurrent builders of other recipes do not hold this recipe's build lock."""
    record.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": RESOLUTION_FORMAT,
        "recipe": recipe.name,
        "resolved": datetime.now(UTC).isoformat(timespec="seconds"),
        "lists": lists,
        "key": _cache_key(recipe, packages),
        "packages": [dataclasses.asdict(p) for p in packages],
    }
    staging = record.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    staging.replace(record)


def picked_by_runs(images: list[GuestImage]) -> dict[str, GuestImage]:
    """Of `images` (newest first), the one a run of each recipe boots by default: its newest build with the
    recipe's own kernel. A build pinned to another kernel is booted only when asked for (`--kernel-deb`)."""
    picked: dict[str, GuestImage] = {}
    for image in images:
        if image.kernel_pin is None:
            picked.setdefault(image.name, image)
    return picked


def find_image(name: str, kernel: str = DEFAULT_KERNEL, kernel_debs: tuple[Path, ...] = (),
               log: Callable[[str], None] = print) -> GuestImage:
    """The one way the lab finds the image to boot, for single runs, matrices and the pytest plugin.

    `name` is a recipe name or a built image directory. A recipe comes from the cache with its
    own kernel, or is built (or found built) with a Debian kernel pinned as `linux-image-…=VERSION`,
    or with the user's own kernel package files.
    """
    if "/" in name:
        if not Path(name).is_dir():
            raise UsageError(f"no image directory {name}")
        return GuestImage.open(Path(name)).verified()
    if kernel != DEFAULT_KERNEL or kernel_debs:
        recipe = ImageRecipe.named(name)
        if kernel != DEFAULT_KERNEL:
            recipe = recipe.pinned(kernel)
        image, _ = ImageStore().build(recipe, log=log, kernel_debs=kernel_debs)
        return image
    found = ImageStore().latest(name)
    if found is None:
        raise SetupError(f"image {name} is not built: run `lab images build {name}`")
    return found.verified()

