"""Where the lab keeps what outlives a run: the cache (images, debs, symbols) and the recipes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO_ROOT / "images"
SCENARIOS_DIR = REPO_ROOT / "scenarios"


def cache_root() -> Path:
    """`$LAB_CACHE_DIR`, else `$XDG_CACHE_HOME/hibernation-lab`, else `~/.cache/hibernation-lab`."""
    if explicit := os.environ.get("LAB_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hibernation-lab"


SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """One of the JSON schemas that scenario, matrix and image recipe files are validated against."""
    schema: dict[str, Any] = json.loads((SCHEMAS_DIR / f"{name}.json").read_text())
    return schema
