"""The package follows its data path: import-linter holds the contracts written in pyproject.toml.

Each layer imports only the layers below it, and nothing that judges imports anything that starts
a process or talks to QEMU.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from lab.paths import REPO_ROOT


def test_import_contracts_are_kept():
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert linter is not None, "import-linter is a test dependency: pip install -e '.[test]'"
    done = subprocess.run([linter, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]


def test_importing_the_verdict_loads_no_launcher():
    probe = ("import sys, lab.judge.verdict, lab.report.result; "
             "print(sorted(m for m in ('qemu.qmp', 'pexpect', 'paramiko', 'lab.machine.process') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_qemu_has_one_launch_path():
    """Every QEMU the lab starts (runs, probes, the OFF2 check) goes through Machine: a host's `start` is called
    from lab/machine/process.py alone, so reaping, logs and the owner mark cannot differ between them."""
    callers = []
    for path in sorted((REPO_ROOT / "lab").rglob("*.py")):
        if path.parent.name == "hosts":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "start" \
                    and isinstance(node.func.value, (ast.Name, ast.Attribute)) \
                    and ast.unparse(node.func.value).split(".")[-1] in ("host", "LOCAL"):
                callers.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert [caller.split(":")[0] for caller in callers] == ["lab/machine/process.py"], callers
