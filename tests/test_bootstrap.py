"""./bootstrap as a new user meets it: without root, on a machine where root has installed the packages.

Each test creates a throwaway user (and removes it with its home afterwards). Which packages count as
installed is what dpkg-query says; a test hides some of them by giving dpkg-query a copy of dpkg's status
file without their entries (DPKG_ADMINDIR), so nothing on the machine is removed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.image.recipe import DEFAULT_IMAGE
from lab.image.store import ImageStore
from lab.paths import REPO_ROOT, cache_root

DPKG_STATUS = Path("/var/lib/dpkg/status")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating a throwaway user needs root")


@dataclass(frozen=True)
class User:
    name: str
    home: Path

    def run(self, command: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """As this user, with the environment a login would give (no sbin on PATH, no sudo)."""
        environment = {"HOME": str(self.home), "USER": self.name, "PATH": "/usr/local/bin:/usr/bin:/bin",
                       "LANG": "C.UTF-8", **(env or {})}
        return subprocess.run(["setpriv", "--reuid", self.name, "--regid", self.name, "--init-groups",
                               "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *command],
                              cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def user() -> Iterator[User]:
    name = f"labtest{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, capture_output=True)
    try:
        yield User(name, Path(f"/home/{name}"))
    finally:
        subprocess.run(["pkill", "--signal", "KILL", "--uid", name], check=False)
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def _give(user: User, path: Path) -> None:
    subprocess.run(["chown", "-R", f"{user.name}:{user.name}", str(path)], check=True)


def _checkout_for(user: User) -> Path:
    """This checkout's tracked files as they are now, owned by the user."""
    checkout = user.home / "hibernation-lab"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    _give(user, checkout)
    return checkout


def _status_without(user: User, packages: set[str]) -> Path:
    """A dpkg admin directory in which these packages were never installed."""
    admindir = user.home / "dpkg"
    admindir.mkdir()
    stanzas = DPKG_STATUS.read_text().split("\n\n")
    kept = [s for s in stanzas if (m := re.match(r"Package: (\S+)", s)) is None or m.group(1) not in packages]
    (admindir / "status").write_text("\n\n".join(kept))
    (admindir / "updates").mkdir()
    _give(user, admindir)
    return admindir


def _apt_line(stderr: str) -> list[str]:
    match = re.search(r"run: apt-get install --no-install-recommends ([^(\n]+)", stderr)
    assert match, f"no apt-get line named: {stderr!r}"
    return match.group(1).split()


def test_without_root_a_missing_package_is_named_with_its_apt_line(user: User) -> None:
    """The main job asks only for its own packages; --tests adds the tests' ones. Neither asks for sudo."""
    checkout = _checkout_for(user)
    admindir = _status_without(user, {"qemu-utils", "munge", "shellcheck", "python3-dev"})
    env = {"DPKG_ADMINDIR": str(admindir)}

    main = user.run(["./bootstrap"], cwd=checkout, env=env)
    tests = user.run(["./bootstrap", "--tests"], cwd=checkout, env=env)

    assert main.returncode == 2 and tests.returncode == 2, (main, tests)
    # The user's python3 is Debian's (/usr/bin on a login's PATH): pip compiles minilzo against its headers.
    assert sorted(_apt_line(main.stderr)) == ["python3-dev", "qemu-utils"]
    assert sorted(_apt_line(tests.stderr)) == ["munge", "python3-dev", "qemu-utils", "shellcheck"]
    for done in (main, tests):
        assert len(done.stderr.strip().splitlines()) == 1 and "sudo" not in done.stderr
    assert not (checkout / ".venv").exists(), "bootstrap must stop before it builds anything"


def _seed_cache(user: User) -> Path:
    """The user's cache holds root's default images and package lists (not the .debs), so bootstrap finds the
    images instead of building them again for minutes; the README's claim that they come out the same is
    what lets a cache hit stand for a build here. Only those: other images may be half-built right now."""
    cache = user.home / ".cache/hibernation-lab"
    source = cache_root()
    for arch in ("arm64", "amd64"):
        image = ImageStore().latest(DEFAULT_IMAGE[arch])
        assert image is not None, f"the default {arch} image is not built: run ./bootstrap"
        shutil.copytree(image.path, cache / "images" / image.path.name)
    for part in ("resolutions", "apt"):
        if (source / part).exists():
            shutil.copytree((source / part).resolve(), cache / part, symlinks=True,
                            ignore=shutil.ignore_patterns("*.deb"))
    _give(user, user.home / ".cache")
    return cache


@pytest.mark.guest
def test_without_root_bootstrap_and_the_main_job_run(user: User) -> None:
    """Root has installed every package: a user without root bootstraps and runs hibernate-resume."""
    checkout = _checkout_for(user)
    _seed_cache(user)

    bootstrap = user.run(["./bootstrap"], cwd=checkout, timeout=900)
    assert bootstrap.returncode == 0, bootstrap.stdout + bootstrap.stderr
    assert "sudo" not in bootstrap.stderr
    scenario = user.run([".venv/bin/lab", "scenario", "hibernate-resume"], cwd=checkout, timeout=1200)
    assert scenario.returncode == 0, scenario.stdout + scenario.stderr
    assert re.search(r"^PASS ", scenario.stdout, re.MULTILINE), scenario.stdout
