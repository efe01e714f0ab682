"""What a QEMU build needs on the build host, checked the way configure will use it.

A fresh machine taught this: the native build installs gcc-aarch64-linux-gnu, which brings the aarch64 C
runtime but not its headers; a check that looked for the runtime's libc.so.6 then passed, the arm64 build
skipped libc6-dev-arm64-cross, and configure stopped on "sizeof(size_t) doesn't match GLIB_SIZEOF_SIZE_T".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.qemu import recipe

pytestmark = pytest.mark.timeout(300)


def _c_library() -> recipe.Prerequisite:
    return next(p for p in recipe.ARM64_CROSS.prerequisites if p.package == "libc6-dev-arm64-cross")


def _installed(package: str) -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", package],
                            capture_output=True, text=True, timeout=30)
    return status.returncode == 0 and status.stdout == "installed"


def test_the_c_library_counts_as_present_exactly_when_debian_has_the_compiler_and_its_headers() -> None:
    expected = _installed("gcc-aarch64-linux-gnu") and _installed("libc6-dev-arm64-cross")
    assert _c_library().present() is expected


def test_a_cross_compiler_without_the_c_library_s_headers_does_not_count(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The state the fresh machine was in: the compiler and libc.so.6 there, no headers to build against
    (Debian's cross gcc reads /usr/aarch64-linux-gnu/include whatever the sysroot, so -nostdinc hides them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which(f"{recipe.AARCH64_CC}gcc") or f"/usr/bin/{recipe.AARCH64_CC}gcc"
    wrapper = bin_dir / f"{recipe.AARCH64_CC}gcc"
    wrapper.write_text(f'#!/bin/sh\nexec {real} -nostdinc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert not _c_library().present()
