"""Shared fixtures: the default guest image (built by ./bootstrap) and a scratch run directory.

Host-dependent tests carry a needs_*/depends_on_* marker (pyproject.toml) and, added here, `host`:
`-m "not host"` leaves the tests any lab host can run. A tool `./bootstrap --tests` installs fails its
tests when missing, as the default image does; other tools skip theirs.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.image.guest_image import GuestImage
from lab.image.recipe import DEFAULT_IMAGE, DEFAULT_SYSTEM_IMAGE
from lab.image.store import ImageStore
from lab.scenario.model import find_scenario
from lab.scenario.run import RunOptions, RunResult, run_scenario
from tests.support.orphans import kill, leaked_qemus, mark_as_owner
from tests.support.private_dirs import remove_private_dirs, use_private_dirs

PRIVATE_DIRS = pytest.StashKey[Path]()


@dataclass(frozen=True)
class HostTool:
    """A program a marked test runs, how to get it, and whether ./bootstrap installs it."""

    program: str
    install: str
    from_bootstrap: bool = False


HOST_TOOLS = {
    "needs_ruby": HostTool("ruby", "run ./bootstrap --tests", from_bootstrap=True),
    "needs_shellcheck": HostTool("shellcheck", "run ./bootstrap --tests", from_bootstrap=True),
    "needs_systemd_analyze": HostTool("systemd-analyze", "run ./bootstrap --tests", from_bootstrap=True),
}
HOST_MARKERS = (*HOST_TOOLS, "depends_on_kvm")
# Seconds a test may take (pyproject.toml's `timeout` for the rest): a guest test may build the patched
# QEMU on first use, which has taken 34 minutes on a loaded machine; a hang still ends inside CI's hour.
SLOW_TEST_TIMEOUT = 2400
SLOW_MARKERS = ("guest", "qemu", "network", "slurm")
# pytest-xdist (`-n auto --dist loadgroup`, pyproject.toml) hands each group to one worker: a module by default,
# so its module fixtures run once; the tests that each boot an emulated KVM host of 6 GiB, and the ones that
# each start a Slurm cluster, form one group apiece, so no two of those run at once.
KVM_HOST_MODULES = ("tests/fleet/test_kvm_host.py", "tests/hosts/test_kvm_runs.py")
WORKER_MEMORY_GIB = 6


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (CI's timeout, a `kill`) ends the run as Ctrl-C does, so every `finally` and fixture teardown
    runs and stops the QEMU, PostgreSQL and Slurm daemons the tests started: Python's default would end
    the process at once and leave them running.

    Ctrl-C is Python's KeyboardInterrupt here, whoever started pytest: a script's background job starts
    with SIGINT ignored, which its children inherit, and the tests send SIGINT to the labs they start.
    Every QEMU started below carries the owner mark; the lab writes into the tests' own cache and config."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    mark_as_owner()
    config.stash[PRIVATE_DIRS] = use_private_dirs()


def pytest_unconfigure(config: pytest.Config) -> None:
    if PRIVATE_DIRS in config.stash:
        remove_private_dirs(config.stash[PRIVATE_DIRS])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark host-dependent tests `host` and the ones outside the fast set `slow` before -m selects, so each
    group can be deselected at once; give tests that boot guests, fetch or start Slurm a longer timeout
    unless they set their own."""
    for item in items:
        if any(item.get_closest_marker(name) for name in HOST_MARKERS):
            item.add_marker(pytest.mark.host)
        if any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)
        long_running = item.get_closest_marker("guest") or item.get_closest_marker("slurm") \
            or item.get_closest_marker("network")
        if long_running and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_worker_group(item)))


def _worker_group(item: pytest.Item) -> str:
    module = item.nodeid.split("::", 1)[0]
    if module in KVM_HOST_MODULES:
        return "kvm-host"
    if item.get_closest_marker("slurm"):
        return "slurm"
    return module


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker per core, as far as memory holds a system guest or an emulated host in each."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(os.cpu_count() or 1, int(memory_gib // WORKER_MEMORY_GIB)))


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
def x86_hibernate_resume_run(tmp_path_factory: pytest.TempPathFactory, default_x86_image: GuestImage) -> RunResult:
    """hibernate-resume on an x86_64 guest (ACPI S4), run once for the tests that read it: the x86 scenario
    tests, and the patched QEMU's tests that compare arm64 SYSTEM_OFF2 with it."""
    run_dir = tmp_path_factory.mktemp("x86-hibernate-resume") / "run"
    return run_scenario(find_scenario("hibernate-resume"), RunOptions(arch="x86_64", run_dir=run_dir), [])


@pytest.fixture(scope="session")
def patched_qemu() -> Path:
    """The lab's own QEMU with the SYSTEM_OFF2 series: built here once (about ten minutes on two cores),
    then found in the lab's cache."""
    from lab.qemu.builder import build_qemu

    return build_qemu("native", say=lambda line: print(f"lab qemu build: {line}"))


@pytest.fixture(autouse=True)
def _no_orphan_qemu() -> Iterator[None]:
    """Every test must leave no QEMU behind: the lab's promise, checked after each test. What leaked is
    killed, so one leak fails one test and not every test after it."""
    yield
    leaked = leaked_qemus()
    if leaked:
        kill(leaked)
        pytest.fail(f"QEMU processes left running (killed now): {sorted(leaked.items())}", pytrace=False)
