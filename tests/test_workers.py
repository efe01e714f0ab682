"""The suite on several workers keeps each group on one of them: a module's fixtures run once, and the emulated
KVM hosts and the Slurm clusters never run two at a time (tests/conftest.py names the groups)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict

from lab.paths import REPO_ROOT

MODULES = ("tests/test_digest.py", "tests/test_logs.py")


def test_each_module_runs_whole_on_one_worker() -> None:
    """Checked on an inner run, as the suite runs: a pytest and a pytest-xdist that stop grouping do it silently."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p",
                           "no:cacheprovider", *MODULES], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, module, group in re.findall(r"^\[(gw\d+)\] .*PASSED (tests/\S+?\.py)::\S+?(@\S+)?\s*$",
                                            done.stdout, re.MULTILINE):
        assert group == f"@{module}", f"{module} ran outside its group ({group or 'none'})"
        workers[module].add(worker)
    assert set(workers) == set(MODULES), done.stdout[-2000:]
    assert all(len(ran_on) == 1 for ran_on in workers.values()), dict(workers)
