"""Building a system image: mmdebstrap's root filesystem, the lab's units, one GPT disk, a manifest.

The root filesystem comes from Debian's packages through mmdebstrap (for arm64 on an x86 machine,
through qemu-user and binfmt_misc, so maintainer scripts and update-initramfs run as on the real
thing). The named packages are pinned to the versions the lab's private apt resolves, and those
versions key the cache, as for the busybox images; every package the system ends up with, and the
sha256 of each .deb, goes into `manifest.json`. The disk is written without loop devices (gpt.py).
A failed or interrupted build leaves nothing in the cache: it happens in a staging directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.digest import sha256_file
from lab.errors import SetupError
from lab.image import gpt
from lab.image.build_locks import build_lock, recipe_build_lock
from lab.image.debian import MIRROR, PrivateApt
from lab.image.guest_image import SYSTEM_KIND, GuestImage
from lab.image.keys import CLIENT_KEY
from lab.image.system_recipe import SYSTEM_FILES_DIR, SystemRecipe
from lab.image.system_ssh import configure_ssh
from lab.paths import cache_root
from lab.vocabulary import InitramfsGenerator

SYSTEM_FORMAT = 2
"""2: OpenSSH keyed for the image and pinned in its manifest, with systemd-networkd up (lab.image.system_ssh)."""
MMDEBSTRAP_TIMEOUT = 3600
SWAP_FILE = "swapfile"
UNITS = ("lab-shell.service", "lab-swap.service", "lab-ready.service")
SCRIPTS = ("swap-on", "mark-ready")
SLEEP_HOOK = "lab-sleep"
"""Installed in /usr/lib/systemd/system-sleep/: says on the console when systemd-sleep hibernates and returns."""
MASKED = (
    "serial-getty@.service", "getty@.service", "systemd-firstboot.service", "apt-daily.timer",
    "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "dpkg-db-backup.timer",
)
"""Units a lab guest has no use for: gettys would fight the lab's shell for the console, first-boot
prompts would wait on it, and timers would wake the system while it is measured."""
MASKED_GENERATOR = "systemd-gpt-auto-generator"
"""It would turn on the swap partition by its GPT type at every boot: a run turns on only the swap area it
asked for (lab-swap.service), since systemd-sleep writes the image to whichever is active."""
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_USER = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}
NATIVE = {"x86_64": "amd64", "aarch64": "arm64"}


def require_builder(recipe: SystemRecipe, binfmt: Path = BINFMT, arch_test: str = "arch-test") -> None:
    """What building needs on this host, each missing piece named with its fix in one line."""
    if os.geteuid() != 0:
        raise SetupError(f"building {recipe.name} needs root: mmdebstrap installs packages as root and the root "
                         "filesystem keeps their owners (run `lab images build` as root once; runs need no root)")
    if shutil.which("mmdebstrap") is None:
        raise SetupError(f"building {recipe.name} needs mmdebstrap: apt-get install mmdebstrap "
                         "(./bootstrap --tests installs it)")
    if NATIVE.get(os.uname().machine) == recipe.arch:
        return
    if shutil.which(arch_test) is None:
        raise SetupError(f"building {recipe.name} for a foreign architecture needs arch-test (mmdebstrap asks "
                         "it whether this host can run that architecture): apt-get install arch-test")
    handler = binfmt / QEMU_USER[recipe.arch]
    if not (binfmt / "status").exists():
        raise SetupError(f"building {recipe.name} runs {recipe.arch} programs, but binfmt_misc is not mounted: "
                         f"mount -t binfmt_misc binfmt_misc {binfmt}")
    if not handler.exists() or "enabled" not in handler.read_text():
        raise SetupError(f"building {recipe.name} runs {recipe.arch} programs through qemu-user, which binfmt_misc "
                         f"does not know: apt-get install qemu-user-static binfmt-support && "
                         f"update-binfmts --enable {QEMU_USER[recipe.arch]}")


def resolve_versions(apt: PrivateApt, recipe: SystemRecipe) -> dict[str, str]:
    """The version of each named package (the kernel followed from its metapackage) in the lab's apt lists."""
    apt.update()
    names = [recipe.kernel_package, *recipe.packages]
    found = apt.show([(name, None) for name in names], recipe.arch)
    versions = {c.package.name: c.package.version for c in found}
    kernel = found[0]
    images = [(name, version) for name, version in kernel.depends if name.startswith("linux-image-")]
    if images:
        (versioned,) = apt.show(images[:1], recipe.arch)
        versions[versioned.package.name] = versioned.package.version
    return versions


def _files_digest() -> dict[str, str]:
    return {name: sha256_file(SYSTEM_FILES_DIR / name) for name in (*UNITS, *SCRIPTS, SLEEP_HOOK)}


def cache_key(recipe: SystemRecipe, versions: dict[str, str]) -> str:
    material = {"format": SYSTEM_FORMAT, "recipe": dataclasses.asdict(recipe), "versions": versions,
                "files": _files_digest()}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_logged(args: list[str], log_file: Path, timeout: float, what: str) -> None:
    """Run a build tool in its own process group, its output to `log_file`; on failure, timeout or
    interrupt the whole group is killed (mmdebstrap's apt, dpkg and qemu-user children with it)."""
    with log_file.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            code = process.wait(timeout)
        except BaseException as error:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if isinstance(error, subprocess.TimeoutExpired):
                raise SetupError(f"{what} took longer than {timeout:.0f}s (log: {log_file})") from None
            raise
    if code != 0:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("E:")] or lines or ["(no output)"]
        raise SetupError(f"{what} failed: {errors[-1].strip()} (log: {log_file})")


class SystemImageBuilder:
    """Builds system images into the image cache (`<cache>/images/NAME-KEY/`), beside the busybox ones."""

    def __init__(self, root: Path | None = None) -> None:
        self.cache = root or cache_root()
        self.images = self.cache / "images"

    def apt_for(self, recipe: SystemRecipe) -> PrivateApt:
        return PrivateApt(self.cache / "apt" / recipe.arch, recipe.suite, recipe.arch)

    def build(self, recipe: SystemRecipe, refresh: bool = False,
              log: Callable[[str], None] = print) -> tuple[GuestImage, bool]:
        """Build (or find in the cache) the image; True when it was built now."""
        apt = self.apt_for(recipe)
        with build_lock(self.cache):
            if refresh:
                apt.update(force=True)
            versions = resolve_versions(apt, recipe)
        key = cache_key(recipe, versions)
        with recipe_build_lock(self.cache, recipe.name):
            return self._build(recipe, versions, key, log)

    def _build(self, recipe: SystemRecipe, versions: dict[str, str], key: str,
               log: Callable[[str], None]) -> tuple[GuestImage, bool]:
        """Under the recipe's build lock: another builder may have just made the same image."""
        target = self.images / f"{recipe.name}-{key}"
        if (target / "manifest.json").exists():
            return GuestImage.open(target), False
        require_builder(recipe)
        self.images.mkdir(parents=True, exist_ok=True)
        build_log = self.cache / "logs" / f"{recipe.name}-{key}.log"
        build_log.parent.mkdir(parents=True, exist_ok=True)
        build_log.write_text("")
        staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=self.images))
        try:
            manifest = self._assemble(recipe, versions, staging, build_log, log)
            shutil.copyfile(build_log, staging / "build.log")
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return GuestImage.open(target), True

    def _assemble(self, recipe: SystemRecipe, versions: dict[str, str], out: Path, build_log: Path,
                  log: Callable[[str], None]) -> dict[str, Any]:
        partitions = gpt.layout(recipe.name, recipe.arch, recipe.disk.esp_mib, recipe.disk.root_mib,
                                recipe.disk.swap_partition_mib)
        esp, root_part, swap_part = partitions
        root = out / "root"
        log(f"building {recipe.name}'s root filesystem with mmdebstrap (minutes; log: {build_log})")
        self._bootstrap(recipe, versions, swap_part, root, build_log)
        installed, debs = _installed_packages(root, recipe.arch)
        release, kernel, initrd = _boot_files(root)
        shutil.copyfile(kernel, out / "vmlinuz")
        shutil.copyfile(initrd, out / "initrd.img")
        log(f"configuring {recipe.name} (units, swap file) and writing its disk")
        _configure(root, recipe, root_part)
        ssh = configure_ssh(root, out)
        gpt.make_swap_area(root / SWAP_FILE, recipe.disk.swap_file_mib, gpt.stable_uuid(recipe.name, "swap-file"),
                           "lab-swapfile", filled=True)
        filesystems = out / "filesystems"
        filesystems.mkdir()
        gpt.make_ext4(root, filesystems / "root.ext4", recipe.disk.root_mib,
                      gpt.stable_uuid(recipe.name, "root-fs"), "lab-root")
        shutil.rmtree(root)
        swap_file_block = gpt.first_block(filesystems / "root.ext4", f"/{SWAP_FILE}")
        gpt.make_vfat(filesystems / "esp.vfat", recipe.disk.esp_mib, "LAB-ESP")
        gpt.make_swap_area(filesystems / "swap", recipe.disk.swap_partition_mib, gpt.stable_uuid(recipe.name, "swap"),
                           "lab-swap", filled=False)
        disk = out / "disk.raw"
        gpt.write_gpt(disk, recipe.name, partitions)
        for partition, filesystem in zip(partitions, ("esp.vfat", "root.ext4", "swap"), strict=True):
            gpt.copy_into(filesystems / filesystem, disk, partition.offset)
        shutil.rmtree(filesystems)
        return {
            "format": SYSTEM_FORMAT,
            "kind": SYSTEM_KIND,
            "name": recipe.name,
            "arch": recipe.arch,
            "description": recipe.description,
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
            "kernel_release": release,
            "kernel_pin": None,
            "kernel_append": f"root=PARTUUID={root_part.uuid} rw {recipe.kernel_append}",
            "system": {
                "partitions": [p.to_json() for p in partitions],
                "swap_file": {"path": f"/{SWAP_FILE}", "size": recipe.disk.swap_file_mib * gpt.MIB,
                              "resume_offset": swap_file_block, "partition": root_part.label,
                              "offset": root_part.offset + swap_file_block * gpt.BLOCK_SIZE},
                "initramfs_generator": str(recipe.initramfs_generator),
                "initramfs_resume": f"PARTUUID={swap_part.uuid}"
                if recipe.initramfs_generator is InitramfsGenerator.INITRAMFS_TOOLS else None,
                "esp": esp.label,
            },
            "ssh": ssh,
            "pinned": versions,
            "inputs": [*debs, *({"file": f"images/system/{name}", "sha256": digest}
                                for name, digest in _files_digest().items())],
            "packages": installed,
            "outputs": {name: sha256_file(out / name) for name in ("vmlinuz", "initrd.img", "disk.raw", CLIENT_KEY)},
        }

    def _bootstrap(self, recipe: SystemRecipe, versions: dict[str, str], swap: gpt.Partition, root: Path,
                   log_file: Path) -> None:
        """mmdebstrap's root filesystem, with initramfs-tools told where to resume from before the kernel's
        initramfs is first made (so it is made once, in the chroot, as on an installed system)."""
        pinned = [f"{name}={versions[name]}" if name in versions else name
                  for name in (*recipe.packages, recipe.kernel_package)]
        pinned += [f"{name}={version}" for name, version in versions.items()
                   if name not in recipe.packages and name != recipe.kernel_package]
        resume_conf = {
            InitramfsGenerator.INITRAMFS_TOOLS: (
                'mkdir -p "$1/etc/initramfs-tools/conf.d" && '
                f'echo RESUME=PARTUUID={swap.uuid} > "$1/etc/initramfs-tools/conf.d/resume"'),
            InitramfsGenerator.DRACUT: (
                'mkdir -p "$1/etc/dracut.conf.d" && printf \'%s\\n\' \'hostonly="no"\' '
                '\'add_dracutmodules+=" systemd resume "\' > "$1/etc/dracut.conf.d/90-lab.conf"'),
        }[recipe.initramfs_generator]
        _run_logged([
            "mmdebstrap", f"--arch={recipe.arch}", "--variant=minbase", "--format=directory",
            "--aptopt=Acquire::Check-Valid-Until \"false\"", "--skip=cleanup/apt/cache", "--skip=essential/unlink",
            f"--include={','.join(pinned)}", f"--essential-hook={resume_conf}",
            recipe.suite, str(root), MIRROR,
        ], log_file, MMDEBSTRAP_TIMEOUT, f"mmdebstrap of {recipe.name}")


def _installed_packages(root: Path, arch: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Every installed package with its version (dpkg's status), and each downloaded .deb with its sha256;
    the .debs are then removed from the image."""
    from debian.deb822 import Deb822

    status = (root / "var/lib/dpkg/status").read_text()
    installed = {p["Package"]: p["Version"] for p in Deb822.iter_paragraphs(status)
                 if p.get("Status", "").endswith(" installed")}
    archives = root / "var/cache/apt/archives"
    debs = []
    for deb in sorted(archives.glob("*.deb")):
        name, version, deb_arch = deb.stem.split("_")
        debs.append({"package": name, "arch": deb_arch if deb_arch != "all" else arch,
                     "version": version.replace("%3a", ":"), "sha256": sha256_file(deb)})
        deb.unlink()
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    return installed, debs


def _boot_files(root: Path) -> tuple[str, Path, Path]:
    """The kernel release, its image and the initramfs update-initramfs made for it."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise SetupError(f"expected one kernel in the system's /boot, found {len(kernels)}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{release}"
    if not initrd.is_file():
        raise SetupError(f"the system has no initramfs for {release}: update-initramfs did not run in the chroot")
    return release, kernels[0], initrd


def _configure(root: Path, recipe: SystemRecipe, root_part: gpt.Partition) -> None:
    """The lab's units and scripts, a fixed machine id (no first-boot prompts), fstab, masked units."""
    (root / "etc/hostname").write_text("lab-system\n")
    (root / "etc/machine-id").write_text(gpt.stable_uuid(recipe.name, "machine-id").replace("-", "") + "\n")
    (root / "etc/fstab").write_text(f"PARTUUID={root_part.uuid} / ext4 rw,errors=remount-ro 0 1\n")
    units = root / "etc/systemd/system"
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in UNITS:
        shutil.copyfile(SYSTEM_FILES_DIR / unit, units / unit)
        (wants / unit).unlink(missing_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    scripts = root / "usr/local/lib/lab"
    scripts.mkdir(parents=True, exist_ok=True)
    for script in SCRIPTS:
        shutil.copyfile(SYSTEM_FILES_DIR / script, scripts / script)
        (scripts / script).chmod(0o755)
    hooks = root / "usr/lib/systemd/system-sleep"
    hooks.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SYSTEM_FILES_DIR / SLEEP_HOOK, hooks / SLEEP_HOOK)
    (hooks / SLEEP_HOOK).chmod(0o755)
    for unit in MASKED:
        (units / unit).unlink(missing_ok=True)
        (units / unit).symlink_to("/dev/null")
    generators = root / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    (generators / MASKED_GENERATOR).unlink(missing_ok=True)
    (generators / MASKED_GENERATOR).symlink_to("/dev/null")
    (root / "root").mkdir(mode=0o700, exist_ok=True)
