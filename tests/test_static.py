"""The checks the project declares in pyproject.toml, run as tests: `ruff check` over the tree and
`mypy --strict` over the package, each from this venv, so CI fails when either finds anything."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from lab.paths import REPO_ROOT


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path is not None, f"{name} is a test dependency: pip install -e '.[test]'"
    return path


def test_ruff_finds_nothing():
    done = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_mypy_strict_finds_nothing(tmp_path):
    done = subprocess.run([_tool("mypy"), "--strict", "--cache-dir", str(tmp_path / "mypy-cache"), "lab"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_no_guard_is_an_assert_statement():
    """`python -O` strips asserts: a guard in the package must raise instead."""
    asserts = [f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
               for path in sorted((REPO_ROOT / "lab").rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Assert)]
    assert asserts == []


def test_modules_and_functions_stay_small():
    """One concern per module (under ~400 lines, 420 at most) and functions under 60 lines."""
    too_long = []
    for path in sorted((REPO_ROOT / "lab").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(REPO_ROOT)
        if len(text.splitlines()) > 420:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        too_long += [f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                     for node in ast.walk(ast.parse(text))
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                     and (node.end_lineno or node.lineno) - node.lineno + 1 > 60]
    assert too_long == []


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists the packages by hand (to ship the top-level data as lab.shipped.*): none left out."""
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(REPO_ROOT).parts) for path in (REPO_ROOT / "lab").rglob("__init__.py")}
    assert found <= listed
