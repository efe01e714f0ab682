"""What CI costs on a fresh machine: `.ci/run` on a clean clone, in a Debian 12 root made for the run.

Run (as root): .venv/bin/python benchmarks/fresh_ci.py [--commit REV] [--work DIR] [--timeout MINUTES] [--warm]

A machine's installed packages and the lab's cache cannot be unmade, so the run gets a new machine of its own:
- mmdebstrap makes a minbase Debian 12 root with what a new machine of this kind has (git, gcc, python3, curl),
  and this machine's CA certificates, pip settings and apt settings (a closed network reaches PyPI and Debian
  through them);
- a clone of the commit runs `.ci/run` in that root: bootstrap installs every package, builds every image and
  QEMU, and the suite runs, all from nothing;
- the run has its own pid and mount namespaces, so whatever it starts ends with it (a timeout or Ctrl-C kills
  the whole namespace).
`--warm` runs again in the root a run left behind, on a new clone: CI on a machine that keeps its packages and the
lab's cache. Only the kernel and binfmt_misc's registrations are this machine's. The output goes to `<work>/ci.log`; the
figures printed are the whole run, pytest's own time and its summary line. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lab.paths import REPO_ROOT

INCLUDE = ("ca-certificates", "git", "gcc", "g++", "make", "python3", "curl", "procps", "iproute2", "xz-utils",
           "bzip2", "patch", "less", "file", "gnupg", "openssh-client")
SOURCES = ("deb http://deb.debian.org/debian bookworm main", "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main")
COPIED = ("/etc/pip.conf", "/etc/xdg/pip", "/root/.config/pip", "/etc/apt/apt.conf.d/99artifact-registry",
          "/etc/resolv.conf", "/etc/hosts")
"""This machine's settings a new one of its kind starts with, where they exist."""
BOUND = ("/opt/wheels", "/opt/pypi", "/opt/pypi-more")
"""Local package indexes pip's settings name, bound read-only where they exist."""
PASSED_ON = ("PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_CERT", "PIP_FIND_LINKS", "SSL_CERT_FILE",
             "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO")
PYTEST_SUMMARY = re.compile(r"^=+ (.*) in ([\d.]+)s .*=+$", re.MULTILINE)


def make_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["mmdebstrap", "--variant=minbase", "--quiet", '--aptopt=Acquire::Check-Valid-Until "false"',
                    f"--include={','.join(INCLUDE)}", "bookworm", str(root), *SOURCES], check=True, timeout=1800)
    for certificate in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(certificate, root / "usr/local/share/ca-certificates")
    subprocess.run(["chroot", str(root), "update-ca-certificates"], check=True, capture_output=True, timeout=300)
    for name in COPIED:
        source = Path(name)
        target = root / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy(source, target)
    for name in (*BOUND, "/src"):
        (root / name.lstrip("/")).mkdir(parents=True, exist_ok=True)


def namespace_script(root: Path, commit: str) -> str:
    """Mounts inside the run's mount namespace, then `.ci/run` on a clone, as root in the new root."""
    environment = {"HOME": "/root", "USER": "root", "LANG": "C.UTF-8", "TERM": "dumb",
                   "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   **{name: os.environ[name] for name in PASSED_ON if name in os.environ}}
    inside = (f"cd /root && rm -rf lab && git clone -q /src lab && cd lab && git checkout -q {shlex.quote(commit)} "
              "&& git log --oneline -1 && .ci/run")
    mounts = [f"mount --rbind /dev {root}/dev", f"mount -t proc proc {root}/proc", f"mount --rbind /sys {root}/sys",
              f"mount --bind -o ro {REPO_ROOT} {root}/src",
              *(f"mount --bind -o ro {name} {root}{name}" for name in BOUND if Path(name).is_dir())]
    command = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environment.items()),
               "bash", "-c", inside]
    return "set -e\n" + "\n".join(mounts) + "\nexec " + shlex.join(command) + "\n"


def run(root: Path, commit: str, log: Path, timeout: float) -> tuple[int | None, float]:
    """The run's exit status (None when it was stopped) and its wall time."""
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(["unshare", "--pid", "--kill-child", "--mount", "--propagation", "private",
                                    "bash", "-c", namespace_script(root, commit)], stdout=out, stderr=subprocess.STDOUT)
        try:
            code: int | None = process.wait(timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.kill()  # --kill-child: the namespace's first process dies with it, and the kernel ends the rest
            process.wait()
            code = None
    return code, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="HEAD", help="what to clone and run (default: HEAD)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/lab-fresh-ci"), help="where the root and log go")
    parser.add_argument("--timeout", type=float, default=120, help="minutes before the run is stopped")
    parser.add_argument("--warm", action="store_true", help="run in the root the last run left (packages, cache)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("fresh_ci: making a root and namespaces needs root", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", args.commit], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    args.work.mkdir(parents=True, exist_ok=True)
    root, log = args.work / "root", args.work / "ci.log"
    if args.warm:
        if not (root / "root/.cache/hibernation-lab").is_dir():
            print(f"fresh_ci: --warm needs the root of an earlier run at {root}", file=sys.stderr)
            return 2
        print(f"warm: the root of the last run, {root}")
    else:
        started = time.monotonic()
        make_root(root)
        print(f"fresh Debian 12 root in {time.monotonic() - started:.0f} s: {root}")
    code, seconds = run(root, commit, log, args.timeout * 60)
    summary = PYTEST_SUMMARY.findall(log.read_text(errors="replace"))
    print(f".ci/run of {commit[:12]}: {'stopped after the timeout' if code is None else f'exit {code}'}, "
          f"{seconds / 60:.1f} min in all (log: {log})")
    if summary:
        tests, pytest_seconds = summary[-1]
        print(f"pytest: {tests} in {float(pytest_seconds) / 60:.1f} min; "
              f"bootstrap and the rest: {(seconds - float(pytest_seconds)) / 60:.1f} min")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
