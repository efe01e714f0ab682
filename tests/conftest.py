"""Shared fixtures: the default guest image (built by ./bootstrap) and a scratch run directory.

Host-dependent tests carry a needs_*/depends_on_* marker (pyproject.toml) and, added here, `host`:
`-m "not host"` leaves the tests any lab host can run. A tool ./bootstrap installs fails its tests
when missing, as the default image does; other tools skip theirs.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.image.guest_image import GuestImage
from lab.image.recipe import DEFAULT_IMAGE, DEFAULT_SYSTEM_IMAGE
from lab.image.store import ImageStore


@dataclass(frozen=True)
class HostTool:
    """A program a marked test runs, how to get it, and whether ./bootstrap installs it."""

    program: str
    install: str
    from_bootstrap: bool = False


HOST_TOOLS = {
    "needs_ruby": HostTool("ruby", "run ./bootstrap", from_bootstrap=True),
    "needs_shellcheck": HostTool("shellcheck", "apt-get install shellcheck"),
    "needs_systemd_analyze": HostTool("systemd-analyze", "apt-get install systemd"),
}
HOST_MARKERS = (*HOST_TOOLS, "depends_on_kvm")


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C is Python's KeyboardInterrupt here, whoever started pytest: a script's background job starts
    with SIGINT ignored, which its children inherit, and the tests send SIGINT to the labs they start."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark host-dependent tests `host` before -m selects, so they can be deselected all at once."""
    for item in items:
        if any(item.get_closest_marker(name) for name in HOST_MARKERS):
            item.add_marker(pytest.mark.host)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, tool in HOST_TOOLS.items():
        if item.get_closest_marker(marker) is None or shutil.which(tool.program) is not None:
            continue
        message = f"{tool.program} is not installed ({tool.install}); deselect with -m 'not {marker}'"
        if tool.from_bootstrap:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def _built_default(arch: str) -> GuestImage:
    """A default image; ./bootstrap builds them, and the README's test command runs bootstrap."""
    image = ImageStore().latest(DEFAULT_IMAGE[arch])
    if image is None:
        pytest.fail(f"the default {arch} image is not built: run ./bootstrap (the README's test command does)")
    return image


def _built_system(name: str) -> GuestImage:
    """A system image; `./bootstrap --tests` (the README's test command) builds them."""
    image = ImageStore().latest(name)
    if image is None:
        pytest.fail(f"the system image {name} is not built: run ./bootstrap --tests (the README's test command does)")
    return image


@pytest.fixture(scope="session")
def system_image() -> GuestImage:
    return _built_system(DEFAULT_SYSTEM_IMAGE["arm64"])


@pytest.fixture(scope="session")
def system_x86_image() -> GuestImage:
    return _built_system(DEFAULT_SYSTEM_IMAGE["amd64"])


@pytest.fixture(scope="session")
def system_dracut_image() -> GuestImage:
    return _built_system("debian-arm64-system-dracut")


@pytest.fixture(scope="session")
def default_image() -> GuestImage:
    return _built_default("arm64")


@pytest.fixture(scope="session")
def default_x86_image() -> GuestImage:
    return _built_default("amd64")


@pytest.fixture(scope="session")
def patched_qemu() -> Path:
    """The lab's own QEMU with the SYSTEM_OFF2 series: built here once (about ten minutes on two cores),
    then found in the lab's cache."""
    from lab.qemu.builder import build_qemu

    return build_qemu("native", say=lambda line: print(f"lab qemu build: {line}"))


@pytest.fixture(autouse=True)
def _no_orphan_qemu():
    """Every test must leave no QEMU child behind: the lab's promise, checked after each test."""
    yield
    leaked = _qemu_children()
    assert not leaked, f"QEMU processes left running: {leaked}"


def _qemu_children() -> list[str]:
    """QEMU processes whose parent is this test process (xdist workers each check their own).

    Read from each thread's list of children, not from every process in /proc: this runs after
    every test, and a /proc scan costs about 8 ms where this costs a tenth of one.
    """
    leaked = []
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                command = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if command.startswith("qemu-system"):
                leaked.append(f"{pid} {command}")
    return leaked
