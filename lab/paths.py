"""Where the lab keeps what outlives a run (the cache: images, debs, symbols) and what it ships (scenarios,
image recipes, the QEMU series, the schemas)."""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout, when the lab runs from one (an editable install); an installed lab has only its package."""


def shipped(name: str) -> Path:
    """A directory the lab ships (`images`, `scenarios`, `qemu`): package data of an installed lab
    (lab/shipped/NAME in its wheel), else the checkout's top-level NAME/."""
    packaged = Path(str(files("lab") / "shipped" / name))
    return packaged if packaged.is_dir() else REPO_ROOT / name


IMAGES_DIR = shipped("images")
SCENARIOS_DIR = shipped("scenarios")
QEMU_DIR = shipped("qemu")


def cache_root() -> Path:
    """`$LAB_CACHE_DIR`, else `$XDG_CACHE_HOME/hibernation-lab`, else `~/.cache/hibernation-lab`."""
    if explicit := os.environ.get("LAB_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hibernation-lab"


def qemu_cache() -> Path:
    """The lab's QEMU cache by its real path: configure writes absolute paths into the trees a native build keeps
    (tests/tcg's Makefile links, meson's files), and a tree configured through a link that later goes (the tests'
    own cache directory) breaks `lab qemu test` for good."""
    return (cache_root() / "qemu").resolve()


SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """One of the JSON schemas that scenario, matrix and image recipe files are validated against."""
    schema: dict[str, Any] = json.loads((SCHEMAS_DIR / f"{name}.json").read_text())
    return schema
