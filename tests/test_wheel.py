"""The lab as a user of a Python tool installs it: a wheel of the checkout, installed into a fresh venv,
and `lab` run from another directory. The scenarios, the image recipes with the guest's init, the QEMU
series and the schemas travel in the wheel as package data; nothing is read from the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.paths import REPO_ROOT

LOCAL_ONLY = (".git", ".venv", "build", "runs", "*.egg-info", "__pycache__", ".*_cache")
"""What a checkout may hold besides its sources; the wheel is built from a copy without them, as from a clean clone."""
OUTSIDE_THE_CHECKOUT = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
"""The installed lab runs as a user's would: nothing on the path leads back to the checkout."""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin` directory of a fresh venv holding the lab from its wheel (and its dependencies from PyPI)."""
    root = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(REPO_ROOT, root / "source", ignore=shutil.ignore_patterns(*LOCAL_ONLY))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(source)],
                   check=True, timeout=600, capture_output=True)
    (wheel,) = (root / "dist").glob("hibernation_lab-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=1200,
                   capture_output=True)
    return root / "venv" / "bin"


def _lab(installed: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(installed / "lab"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=OUTSIDE_THE_CHECKOUT)


def test_the_installed_lab_lists_and_shows_its_scenarios_from_its_own_package(installed, tmp_path):
    probe = ("import json, lab.paths as p; print(json.dumps([str(p.SCENARIOS_DIR), str(p.IMAGES_DIR), "
             "str(p.QEMU_DIR / 'patches' / 'series'), str(p.IMAGES_DIR / 'init')]))")
    done = subprocess.run([str(installed / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=True, env=OUTSIDE_THE_CHECKOUT)
    venv = installed.parent.resolve()
    for path in map(Path, json.loads(done.stdout)):
        assert path.resolve().is_relative_to(venv) and path.exists(), path
    packaged = Path(json.loads(done.stdout)[1]).parent
    for name in ("images", "scenarios", "qemu"):
        shipped = {p.relative_to(REPO_ROOT / name) for p in (REPO_ROOT / name).rglob("*") if p.is_file()}
        assert shipped <= {p.relative_to(packaged / name) for p in (packaged / name).rglob("*")}, name
    listed = _lab(installed, tmp_path, "scenarios", "list")
    assert listed.returncode == 0, listed.stderr
    assert "hibernate-resume" in listed.stdout and "psci-none" in listed.stdout
    shown = _lab(installed, tmp_path, "scenarios", "show", "hibernate-resume")
    assert shown.returncode == 0 and "name: hibernate-resume" in shown.stdout


@pytest.mark.guest
def test_the_installed_lab_runs_the_main_job(installed, tmp_path, default_image):
    done = _lab(installed, tmp_path, "scenario", "hibernate-resume", "--runs-dir", str(tmp_path / "runs"),
                timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "PASS" in done.stdout
    (run_dir,) = (path for path in (tmp_path / "runs").iterdir() if path.is_dir())
    assert {"result.json", "report.html", "junit.xml", "reproduce.sh"} <= {p.name for p in run_dir.iterdir()}
