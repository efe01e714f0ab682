"""The tests' own cache and config directories, so no test writes where the user's lab keeps its state.

The private cache links to the user's for what is costly to make and safe to share (images, apt, QEMU
builds, symbols, the digest cache and the build locks), and keeps its own for the rest, such as the lab
hosts file `lab host start` writes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lab.paths import cache_root

SHARED_DIRECTORIES = ("apt", "images", "resolutions", "symbols", "qemu", "locks")
SHARED_FILES = ("image-build.lock", "digests.sqlite3")


def use_private_dirs() -> Path:
    """Point LAB_CACHE_DIR and XDG_CONFIG_HOME at a fresh directory for this process and its children."""
    shared = cache_root()
    private = Path(tempfile.mkdtemp(prefix="lab-tests-"))
    cache = private / "cache"
    cache.mkdir()
    for name in SHARED_DIRECTORIES:
        (shared / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(shared / name)
    for name in SHARED_FILES:
        if (shared / name).exists():
            (cache / name).symlink_to(shared / name)
    (private / "config").mkdir()
    os.environ["LAB_CACHE_DIR"] = str(cache)
    os.environ["XDG_CONFIG_HOME"] = str(private / "config")
    os.environ.pop("LAB_CONFIG", None)
    return private


def remove_private_dirs(private: Path) -> None:
    """Removes the links, never what they point to."""
    shutil.rmtree(private, ignore_errors=True)
