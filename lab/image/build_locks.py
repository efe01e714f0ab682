"""The image cache's build locks: which image builders take turns, and which run side by side."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from lab.locks import held_lock


def build_lock(cache: Path) -> AbstractContextManager[None]:
    """Concurrent users of the private apt and builders of busybox images (pytest-xdist workers, matrices, two
    `lab` commands) take turns: they share apt's lists and its downloaded packages."""
    return held_lock(cache / "image-build.lock")


def recipe_build_lock(cache: Path, name: str) -> AbstractContextManager[None]:
    """Builders of one system recipe take turns. Builds of different ones share nothing (each mmdebstrap has
    its own apt and staging directory), so they run side by side: a fresh machine builds its three at once."""
    return held_lock(cache / "locks" / f"build-{name}.lock")
