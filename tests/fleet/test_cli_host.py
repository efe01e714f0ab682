"""`lab host` as a user meets it: bad input is one line and exit 2, before anything boots or builds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

LAB = [sys.executable, "-m", "lab.cli"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["host", "start", "no-such-host"], "lab: error: no image recipe named 'no-such-host'"),
        (["host", "start", "debian-arm64"], "lab: error: image debian-arm64 is not a lab host (role guest)"),
        (["host", "build", "--kernel-deb", "linux-image-cloud-arm64"], "lab: error: --kernel-deb wants"),
        (["host", "start", "--kernel-deb", "linux-image-cloud-arm64=0.0-1"],
         "lab: error: no linux-image-cloud-arm64:arm64=0.0-1 in Debian"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    done = subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_host_list_reads_the_hosts_file(tmp_path):
    done = subprocess.run([*LAB, "host", "list"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LAB_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"no lab hosts running ({tmp_path}/hosts/hosts.json)\n"
