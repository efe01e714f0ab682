"""The package follows its data path: import-linter holds the contracts written in pyproject.toml.

Each layer imports only the layers below it, and nothing that judges imports anything that starts
a process or talks to QEMU.
"""

from __future__ import annotations

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
