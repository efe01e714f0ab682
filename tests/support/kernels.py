"""Kernel versions the tests boot, resolved against what Debian's archive serves today.

A test that pinned `6.12.117-1` would break the day the archive drops it: tests ask for "the newest
served 6.12" instead, and fail with one clear line when the archive serves none.
"""

from __future__ import annotations

import functools

import pytest
from debian.debian_support import Version

from lab.image.recipe import ImageRecipe
from lab.image.store import ImageStore


@functools.cache
def served(arch: str = "arm64") -> tuple[str, ...]:
    """The versions of the default image's kernel metapackage in the lab's suites, oldest first."""
    recipe = ImageRecipe.named(f"debian-{arch}")
    apt = ImageStore().apt_for(recipe)
    apt.update()
    return tuple(sorted(apt.versions(recipe.kernel_package, arch), key=Version))


def kernel_package(arch: str = "arm64") -> str:
    return ImageRecipe.named(f"debian-{arch}").kernel_package


def newest_served(series: str, arch: str = "arm64") -> str:
    """The newest served version of kernel `series` (`6.12`, `7.2`); the test fails if there is none."""
    matching = [version for version in served(arch) if version.startswith(f"{series}.")]
    if not matching:
        pytest.fail(f"Debian's archive serves no {series} kernel for {arch} "
                    f"({kernel_package(arch)}: {', '.join(served(arch))})", pytrace=False)
    return matching[-1]


def kernel_pin(series: str, arch: str = "arm64") -> str:
    """`--kernel-deb` for the newest served `series`: `linux-image-cloud-arm64=6.12.N-M`."""
    return f"{kernel_package(arch)}={newest_served(series, arch)}"
