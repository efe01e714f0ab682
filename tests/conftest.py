"""Shared fixtures: the default guest image (built by ./bootstrap) and a scratch run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.image.guest_image import GuestImage
from lab.image.recipe import DEFAULT_IMAGE
from lab.image.store import ImageStore


def _built_default(arch: str) -> GuestImage:
    """A default image; ./bootstrap builds them, and the README's test command runs bootstrap."""
    image = ImageStore().latest(DEFAULT_IMAGE[arch])
    if image is None:
        pytest.fail(f"the default {arch} image is not built: run ./bootstrap (the README's test command does)")
    return image


@pytest.fixture(scope="session")
def default_image() -> GuestImage:
    return _built_default("arm64")


@pytest.fixture(scope="session")
def default_x86_image() -> GuestImage:
    return _built_default("amd64")


@pytest.fixture(autouse=True)
def _no_orphan_qemu():
    """Every test must leave no QEMU child behind: the lab's promise, checked after each test."""
    yield
    leaked = _qemu_children()
    assert not leaked, f"QEMU processes left running: {leaked}"


def _qemu_children() -> list[str]:
    """QEMU processes whose parent is this test process (xdist workers each check their own)."""
    leaked = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            command = fields[0].split("(", 1)[1]
            parent = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and command.startswith("qemu-system"):
            leaked.append(f"{stat.parent.name} {command}")
    return leaked
