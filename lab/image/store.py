"""Guest images: built from Debian packages by name, cached by the resolved package versions.

An image is a directory holding the kernel Image, an initramfs (busybox, the lab's init,
the kernel modules the guest needs), a blank raw swap disk template and `manifest.json`,
which records every input and output with its sha256. An image with an SSH server also holds
the server with its shared libraries, a host key generated for this image alone (its public
half in the manifest, so the lab can pin it) and the private half of the client key it accepts.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from elftools.elf.elffile import ELFFile

from lab.errors import SetupError, UsageError
from lab.image import initramfs
from lab.image.debian import PackageVersion, PrivateApt, sha256_file
from lab.paths import IMAGES_DIR, cache_root, load_schema
from lab.vocabulary import GUEST_ARCHES, guest_arch

IMAGE_FORMAT = 1
KERNEL_PACKAGE_PREFIXES = ("linux-image-", "linux-binary-", "linux-modules-")
DEFAULT_KERNEL = "default"
"""The kernel an image recipe names itself, as opposed to one pinned by version."""
DEFAULT_IMAGE = {arch.debian: f"debian-{arch.debian}" for arch in GUEST_ARCHES}
_SCHEMA = load_schema("image-recipe")
DROPBEAR = "usr/sbin/dropbear"
DROPBEAR_HOST_KEY = "etc/dropbear/dropbear_ed25519_host_key"
CLIENT_KEY = "ssh-client-key"
SSH_USER = "root"
BASE_DIRECTORIES = ("bin", "dev", "etc", "etc/lab", "lib", "lib/modules", "proc", "run", "sys", "tmp")


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
        try:
            data = yaml.safe_load(path.read_text())
            jsonschema.validate(data, _SCHEMA)
        except (OSError, yaml.YAMLError) as error:
            raise UsageError(f"cannot read image recipe {path}: {error}") from error
        except jsonschema.ValidationError as error:
            field = "/".join(str(part) for part in error.absolute_path) or "(top level)"
            raise UsageError(f"{path}: {field}: {error.message}") from error
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
        return self.manifest["name"]

    @property
    def arch(self) -> str:
        return self.manifest["arch"]

    @property
    def qemu_arch(self) -> str:
        return guest_arch(self.arch).qemu

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
    section = ELFFile(io.BytesIO(module)).get_section_by_name(".modinfo")
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


def _elf_links(data: bytes) -> tuple[str | None, list[str]]:
    """An ELF file's program interpreter (PT_INTERP) and the sonames it loads (DT_NEEDED)."""
    interpreter, needed = None, []
    for segment in ELFFile(io.BytesIO(data)).iter_segments():
        if segment["p_type"] == "PT_INTERP":
            interpreter = segment.get_interp_name()
        elif segment["p_type"] == "PT_DYNAMIC":
            needed += [tag.needed for tag in segment.iter_tags("DT_NEEDED")]
    return interpreter, needed


def _in_tree(root: Path, path: str) -> Path | None:
    """A file of the extracted packages by its guest path, symlinks followed inside the tree.

    Merged-/usr packages ship `/lib/...` files under `/usr/lib/...`, so both are looked at.
    """
    for candidate in (path.lstrip("/"), "usr/" + path.lstrip("/")):
        current = root / candidate
        for _ in range(16):
            if not current.is_symlink():
                break
            target = os.readlink(current)
            current = root / target.lstrip("/") if target.startswith("/") else current.parent / target
        if not current.is_symlink() and current.is_file():
            return current
    return None


def program_closure(root: Path, program: str, arch: str) -> dict[str, bytes]:
    """A dynamically linked program with its loader and every shared library it loads, by guest path.

    The loader also answers to its soname (libc.so.6 needs ld-linux-aarch64.so.1): it is taken
    once, where PT_INTERP names it.
    """
    multiarch = guest_arch(arch).multiarch
    library_dirs = (f"usr/lib/{multiarch}", f"lib/{multiarch}", "usr/lib", "lib")
    files: dict[str, bytes] = {}
    by_soname: dict[str, str] = {}
    pending = [(program.lstrip("/"), "the recipe")]
    while pending:
        guest_path, wanted_by = pending.pop()
        found = _in_tree(root, guest_path)
        if found is None:
            raise SetupError(f"/{guest_path} (wanted by {wanted_by}) is in none of the image's packages")
        files[guest_path] = found.read_bytes()
        interpreter, needed = _elf_links(files[guest_path])
        if interpreter is not None and Path(interpreter).name not in by_soname:
            by_soname[Path(interpreter).name] = interpreter.lstrip("/")
            pending.append((interpreter.lstrip("/"), f"/{guest_path}"))
        for soname in needed:
            if soname in by_soname:
                continue
            where = next((d for d in library_dirs if _in_tree(root, f"{d}/{soname}")), None)
            if where is None:
                raise SetupError(f"{soname} (needed by /{guest_path}) is in none of the image's packages: "
                                 "add the package that holds it to the recipe's extra_packages")
            by_soname[soname] = f"{where}/{soname}"
            pending.append((by_soname[soname], f"/{guest_path}"))
    return files


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def dropbear_ed25519_key(key: Ed25519PrivateKey) -> bytes:
    """The key in dropbear's own file format: string "ssh-ed25519", then string(seed || public key).

    dropbearkey cannot run on the build host (it is an arm64 binary), so the image's host key is
    generated here and written the way dropbear reads it.
    """
    raw = serialization.Encoding.Raw
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return _ssh_string(b"ssh-ed25519") + _ssh_string(seed + public)


def _openssh_public(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _parent_directories(paths: list[str], known: set[str]) -> list[str]:
    """Directories the archive still lacks for `paths`, parents first."""
    wanted = {str(parent) for path in paths for parent in Path(path).parents if str(parent) != "."}
    return sorted(wanted - known, key=lambda d: (d.count("/"), d))


def _ssh_server(root: Path, recipe: ImageRecipe, out: Path) -> tuple[list[initramfs.Entry], dict[str, Any]]:
    """Dropbear with its libraries, a fresh host key, root's authorized client key (private half to `out`)."""
    host_key, client_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    descriptor = os.open(out / CLIENT_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    programs = program_closure(root, DROPBEAR, recipe.arch)
    files: dict[str, tuple[bytes, int]] = {path: (data, 0o755) for path, data in programs.items()}
    files |= {
        "etc/passwd": (f"{SSH_USER}:x:0:0:{SSH_USER}:/root:/bin/sh\n".encode(), 0o644),
        "etc/group": (b"root:x:0:\n", 0o644),
        "etc/shells": (b"/bin/sh\n", 0o644),
        DROPBEAR_HOST_KEY: (dropbear_ed25519_key(host_key), 0o600),
        "root/.ssh/authorized_keys": (f"{_openssh_public(client_key)} lab\n".encode(), 0o600),
    }
    private = ["root", "root/.ssh"]
    known = {*BASE_DIRECTORIES, *private}
    entries = [initramfs.directory(d, 0o700) for d in private]
    entries += [initramfs.directory(d) for d in _parent_directories(sorted(files), known)]
    entries += [initramfs.regular_file(path, data, perm) for path, (data, perm) in sorted(files.items())]
    manifest = {"server": recipe.ssh_server, "user": SSH_USER, "host_key": _openssh_public(host_key),
                "client_key": CLIENT_KEY, "files": sorted(programs)}
    return entries, manifest


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
        kernel_debs: tuple[Path, ...] = (),
    ) -> tuple[GuestImage, bool]:
        """Build (or find in the cache) the image for the recipe; True when it was built now.

        `kernel_debs` are the user's own kernel package files, used instead of the recipe's kernel.
        """
        with self._build_lock():
            return self._build(recipe, refresh, log, kernel_debs)

    @contextmanager
    def _build_lock(self) -> Iterator[None]:
        """Concurrent builders (pytest-xdist workers, matrices, two `lab` commands) take turns."""
        self.cache.mkdir(parents=True, exist_ok=True)
        with (self.cache / "image-build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _build(
        self, recipe: ImageRecipe, refresh: bool, log: Callable[[str], None], kernel_debs: tuple[Path, ...]
    ) -> tuple[GuestImage, bool]:
        apt = self.apt_for(recipe)
        if kernel_debs:
            apt.update(force=refresh)
            local = [(_local_package(deb, recipe.arch), deb) for deb in kernel_debs]
            packages = [p for p, _ in local] + self.userland(apt, recipe)
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
            ssh_entries, ssh = _ssh_server(root, recipe, out) if recipe.ssh_server else ([], None)
            entries = [initramfs.directory(d) for d in BASE_DIRECTORIES]
            entries += [
                initramfs.char_device("dev/console", 5, 1),
                initramfs.regular_file("bin/busybox", busybox.read_bytes(), 0o755),
                initramfs.regular_file("init", recipe.init_script.read_bytes(), 0o755),
                initramfs.regular_file("etc/lab/modules", "".join(f"{n}\n" for n, _ in modules).encode()),
            ]
            entries += [initramfs.regular_file(f"lib/modules/{n}.ko", data) for n, data in modules]
            entries += ssh_entries
            initramfs.write_newc_file(out / "initramfs.cpio", entries)
        with (out / "swap.raw").open("wb") as swap:
            swap.truncate(recipe.swap_size_mib << 20)
        outputs = ["vmlinuz", "initramfs.cpio", *(name for name in ("config", CLIENT_KEY) if (out / name).exists())]
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
            "ssh": ssh,
            "inputs": [
                {"package": p.name, "arch": p.arch, "version": p.version, "sha256": p.sha256} for p, _ in debs
            ] + [{"file": "images/init", "sha256": sha256_file(recipe.init_script)}],
            "outputs": {name: sha256_file(out / name) for name in outputs},
        }


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
        return GuestImage.open(Path(name))
    if kernel != DEFAULT_KERNEL or kernel_debs:
        recipe = ImageRecipe.named(name)
        if kernel != DEFAULT_KERNEL:
            recipe = recipe.pinned(kernel)
        image, _ = ImageStore().build(recipe, log=log, kernel_debs=kernel_debs)
        return image
    found = ImageStore().latest(name)
    if found is None:
        raise SetupError(f"image {name} is not built: run `lab images build {name}`")
    return found

