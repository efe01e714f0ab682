"""What a build of the lab's QEMU is made of: Debian's source version (lab.qemu.sources), the patch series, the target
(native, or cross-built for an arm64 KVM host) with what it needs on the build host, and the cache key
over all of them. lab.qemu.builder carries a build out.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.errors import SetupError
from lab.paths import QEMU_DIR
from lab.vocabulary import host_arch

PATCHES_DIR = QEMU_DIR / "patches"
BUILD_FORMAT = 2
"""Part of the cache key: bump it when what a build is made of changes (flags, tools)."""
TOOLS = ("meson==1.9.0", "ninja==1.13.2", "pycotap==1.3.1")
"""From PyPI: meson and ninja build QEMU; pycotap lets `meson test` run its functional tests (the +ds source
strips the wheel QEMU vendors, and Debian's patch drops it from the build venv's requirements)."""
CONFIGURE_FLAGS = (
    "--disable-download", "--target-list=aarch64-softmmu", "--without-default-features", "--enable-tcg",
    "--enable-slirp", "--enable-fdt=system", "--disable-docs", "--disable-tools", "--disable-user",
    "--disable-guest-agent", "--disable-install-blobs",
)
SYSROOT_SUITE = "bookworm"
"""arm64 libraries built against the cross toolchain's glibc (2.36), so gcc 12 links against them."""
SYSROOT_PACKAGES = ("libglib2.0-dev", "libglib2.0-0", "libslirp-dev", "libslirp0", "libfdt-dev", "libfdt1",
                    "zlib1g-dev", "zlib1g", "libpcre2-dev", "libpcre2-8-0")
STEP_TIMEOUT = 3 * 3600.0
AARCH64_CC = "aarch64-linux-gnu-"
"""Debian's cross toolchain prefix (gcc-aarch64-linux-gnu)."""


@dataclass(frozen=True)
class Prerequisite:
    """Something on the build host, how to see it is there, and the Debian package that brings it."""

    what: str
    package: str
    present: Callable[[], bool]


def _command(name: str) -> Callable[[], bool]:
    return lambda: shutil.which(name) is not None


def _file(path: str) -> Callable[[], bool]:
    return lambda: Path(path).exists()


def _pkg_config(module: str) -> Callable[[], bool]:
    def present() -> bool:
        if shutil.which("pkg-config") is None:
            return False
        return subprocess.run(["pkg-config", "--exists", module], timeout=30).returncode == 0
    return present


def _cross_links(prefix: str) -> Callable[[], bool]:
    """Whether the cross compiler builds and links a program against its C library: gcc-aarch64-linux-gnu
    brings the runtime (libc6-arm64-cross) but not the headers, so a file of the runtime proves nothing, and
    configure then fails in a way that names neither (sizeof(size_t) against GLIB_SIZEOF_SIZE_T)."""
    def present() -> bool:
        compiler = shutil.which(f"{prefix}gcc")
        if compiler is None:
            return False
        with tempfile.TemporaryDirectory(prefix="lab-cross-probe-") as scratch:
            source = Path(scratch) / "probe.c"
            source.write_text("#include <stdio.h>\nint main(void) { return puts(\"\") < 0; }\n")
            linked = subprocess.run([compiler, str(source), "-o", str(Path(scratch) / "probe")],
                                    capture_output=True, timeout=120)
        return linked.returncode == 0
    return present


def _system_python_venv() -> bool:
    return subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True,
                          timeout=60).returncode == 0 if Path("/usr/bin/python3").exists() else False


COMMON_PREREQUISITES = (
    Prerequisite("a C compiler", "gcc", _command("cc")),
    Prerequisite("pkg-config", "pkg-config", _command("pkg-config")),
    Prerequisite("dpkg-source", "dpkg-dev", _command("dpkg-source")),
    Prerequisite("patch", "patch", _command("patch")),
    Prerequisite("xz", "xz-utils", _command("xz")),
    Prerequisite("bzip2", "bzip2", _command("bzip2")),
    Prerequisite("Debian's python3 with venv", "python3-venv", _system_python_venv),
)


@dataclass(frozen=True)
class BuildTarget:
    """Where a build runs: here (native) or on an arm64 KVM host (cross-built)."""

    name: str
    host: str
    """QEMU's name of the arch the binary runs on."""
    cross_prefix: str | None
    prerequisites: tuple[Prerequisite, ...]
    keeps_tree: bool = False
    """Whether the source and build trees stay, configured for QEMU's own tests of the series (`lab qemu test`:
    tests/tcg needs an aarch64 compiler, found on this host and never in a container)."""

    @property
    def flags(self) -> tuple[str, ...]:
        kvm = ("--enable-kvm",) if self.host == "aarch64" else ()
        compiler = () if self.host == "aarch64" else (f"--cross-prefix-aarch64={AARCH64_CC}",)
        tests = ("--disable-containers", *compiler) if self.keeps_tree else ()
        return (*CONFIGURE_FLAGS, *kvm, *tests)


NATIVE = BuildTarget("native", host_arch(), None, (
    *COMMON_PREREQUISITES,
    Prerequisite("glib-2.0 headers", "libglib2.0-dev", _pkg_config("glib-2.0")),
    Prerequisite("slirp headers", "libslirp-dev", _pkg_config("slirp")),
    Prerequisite("zlib headers", "zlib1g-dev", _pkg_config("zlib")),
    Prerequisite("libfdt headers", "libfdt-dev", _file("/usr/include/libfdt.h")),
    *(() if host_arch() == "aarch64" else (
        Prerequisite("an aarch64 compiler for QEMU's TCG tests", "gcc-aarch64-linux-gnu",
                     _command(f"{AARCH64_CC}gcc")),)),
), keeps_tree=True)
ARM64_CROSS = BuildTarget("arm64", "aarch64", AARCH64_CC, (
    *COMMON_PREREQUISITES,
    Prerequisite("an aarch64 cross compiler", "gcc-aarch64-linux-gnu", _command(f"{AARCH64_CC}gcc")),
    Prerequisite("the aarch64 C library", "libc6-dev-arm64-cross", _cross_links(AARCH64_CC)),
    Prerequisite("chrpath", "chrpath", _command("chrpath")),
))
TARGETS = {target.name: target for target in (NATIVE, ARM64_CROSS)}


@dataclass(frozen=True)
class Series:
    """The lab's patch series, in order, and one digest over all of it."""

    patches: tuple[Path, ...]
    sha256: str

    @classmethod
    def read(cls, directory: Path | None = None) -> Series:
        directory = directory or PATCHES_DIR
        try:
            names = [line.strip() for line in (directory / "series").read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
        except OSError as error:
            raise SetupError(f"no patch series at {directory}/series: {error.strerror}") from error
        digest = hashlib.sha256()
        patches = []
        for name in names:
            path = directory / name
            if not path.is_file():
                raise SetupError(f"{directory}/series names {name}, which is not there")
            digest.update(name.encode() + b"\0" + path.read_bytes())
            patches.append(path)
        return cls(tuple(patches), digest.hexdigest())


def build_key(version: str, series: Series, target: BuildTarget, extra: tuple[Path, ...] = ()) -> str:
    """Source version, a digest over the series and the `extra` patches a source needs (backports, the
    variants that replace series patches), target, and the build format."""
    upstream = re.sub(r"[^A-Za-z0-9.+-]", "_", version.split(":")[-1])
    digest = hashlib.sha256(series.sha256.encode())
    for patch in extra:
        digest.update(patch.name.encode() + b"\0" + patch.read_bytes())
    return f"{upstream}-{digest.hexdigest()[:12]}-{target.name}-f{BUILD_FORMAT}"
