"""The QEMU builds a lab knows, and what each one reports about SYSTEM_OFF2, asked of QEMU itself.

A build that carries the lab's SYSTEM_OFF2 series (`qemu/patches/`) reports a guest's SYSTEM_OFF2
as x86 QEMU reports ACPI S4, `SUSPEND_DISK` then `SHUTDOWN`, under TCG (its own PSCI is v1.3) and KVM
alike. The lab asks each binary once by booting a probe that powers off as a hibernating guest does
(lab.qemu.off2_probe, a fraction of a second) and remembers the answer by host, path, size and
modification time, so nobody has to say by hand what a build can report.

Known by name: `debian` is the `qemu-system-ARCH` on the host's PATH (Debian's package); `patched`
is the newest build `lab qemu build` made for this machine, or on a lab host the cross-built one its
image ships in /opt/lab-qemu (run through its own loader). Any other value is a path on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab.errors import SetupError, UsageError, WaitTimeout
from lab.hosts.base import Host
from lab.hosts.local import LOCAL, program_on
from lab.paths import qemu_cache
from lab.qemu.off2_probe import reports_off2
from lab.vocabulary import host_arch

REPORTED_AS = "suspend-disk"
"""The OFF2 contract (lab.judge.off2_contract) of a build that reports SYSTEM_OFF2: as x86 reports S4."""
PROBE_FORMAT = 2
"""Part of what the remembered answers are keyed by: bump it when the probe asks something else."""
VERSION_SECONDS = 30.0
DEBIAN = "debian"
PATCHED = "patched"
HOST_PATCHED = Path("/opt/lab-qemu/bin/qemu-system-aarch64")
HOST_PATCHED_LOADER = Path("/opt/lab-qemu/lib/ld-linux-aarch64.so.1")
"""Where a lab host's image keeps the patched cross build and the loader it runs with."""


@dataclass(frozen=True)
class QemuBuild:
    """One QEMU binary on a host, its version, and whether it reports SYSTEM_OFF2 (SUSPEND_DISK, SHUTDOWN)."""

    name: str
    path: Path
    version: str
    reports_off2: bool
    loader: Path | None = None
    """The build's own dynamic loader, for a build shipped with its libraries (see MachineSpec.loader)."""

    @property
    def off2_reporting(self) -> str | None:
        """The OFF2 contract this build speaks when it reports OFF2 (see lab.judge.off2_contract)."""
        return REPORTED_AS if self.reports_off2 else None

    @property
    def launcher(self) -> list[str]:
        if self.loader is None:
            return [str(self.path)]
        return [str(self.loader), "--library-path", str(self.loader.parent), str(self.path)]

    def describe(self) -> str:
        reports = "reports SYSTEM_OFF2 (SUSPEND_DISK, then SHUTDOWN, as x86 S4)" if self.reports_off2 \
            else "reports SYSTEM_OFF2 like SYSTEM_OFF (stock)"
        return f"{self.name}: {self.version}, {reports} ({self.path})"


def builds_root() -> Path:
    return qemu_cache() / "builds"


def tree_in_place(directory: Path) -> bool:
    """Whether a build's kept trees are where configure saw them (build.json's `tree`, written by builds since
    it was recorded: an older tree may have been configured anywhere, and is built again)."""
    try:
        record = json.loads((directory / "build.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("tree") == str(directory)


def patched_binaries(arch: str = "aarch64") -> list[Path]:
    """`qemu-system-ARCH` of every finished lab build for this machine, newest first."""
    root = builds_root()
    if not root.is_dir():
        return []
    found = [d / "bin" / f"qemu-system-{arch}" for d in root.iterdir() if (d / "build.json").is_file()
             and json.loads((d / "build.json").read_text()).get("host") == host_arch()]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def _where(host: Host) -> str:
    return "" if host is LOCAL else f" on host {host.name}"


def resolve_binary(chosen: str | None, arch: str, host: Host = LOCAL) -> tuple[str, Path, Path | None]:
    """A build's name, binary and loader on `host`: `debian`, `patched`, a path, or None for Debian's."""
    text = chosen or DEBIAN
    if text == DEBIAN:
        found = program_on(host, f"qemu-system-{arch}")
        if found is None:
            raise SetupError(f"qemu-system-{arch} not found{_where(host)}: run ./bootstrap (installs QEMU >= 10)")
        return DEBIAN, found, None
    if text == PATCHED:
        if arch != "aarch64":
            raise UsageError(f"the patched QEMU is built for aarch64 guests only, not {arch}")
        if host is not LOCAL:
            if host.run(["test", "-x", str(HOST_PATCHED)]).returncode != 0:
                raise SetupError(f"host {host.name} has no patched QEMU at {HOST_PATCHED}")
            return PATCHED, HOST_PATCHED, HOST_PATCHED_LOADER
        built = patched_binaries(arch)
        if not built:
            raise SetupError("no patched QEMU built yet: run `lab qemu build`")
        return PATCHED, built[0], None
    path = Path(text)
    if host.run(["test", "-f", str(path), "-a", "-x", str(path)]).returncode != 0:
        raise UsageError(f"no QEMU binary {path}{_where(host)}")
    return str(path), path, None


def _version(host: Host, launcher: list[str]) -> str:
    """The version QEMU prints (`10.2.2 (Debian 1:10.2.2+ds-1)`), or `unknown` when it cannot run."""
    try:
        done = host.run([*launcher, "--version"], timeout=VERSION_SECONDS)
    except (SetupError, WaitTimeout):
        return "unknown"
    first = done.text().splitlines()[0] if done.text() else ""
    return first.removeprefix("QEMU emulator version ").strip() or "unknown"


def _known_file() -> Path:
    return qemu_cache() / "known.json"


def _identity(host: Host, binary: Path) -> str:
    """What says a binary is still the one asked before: host, real path, size and modification time."""
    if host is LOCAL:
        real = binary.resolve()
        stat = real.stat()
        return f"probe{PROBE_FORMAT}:local:{real}:{stat.st_size}:{stat.st_mtime_ns}"
    done = host.run(["stat", "-L", "-c", "%s:%Y", str(binary)])
    return f"probe{PROBE_FORMAT}:{host.name}:{binary}:{done.text().strip()}"


def describe_build(chosen: str | None, arch: str, host: Host = LOCAL) -> QemuBuild:
    """The build `chosen` names on `host` (see the module docstring), asked once per binary and remembered.
    SYSTEM_OFF2 is Arm's: a QEMU for another guest arch is not asked (x86 reports ACPI S4 in any build)."""
    name, binary, loader = resolve_binary(chosen, arch, host)
    launcher = QemuBuild(name, binary, "unknown", False, loader).launcher
    key = _identity(host, binary)
    known_path = _known_file()
    try:
        known = json.loads(known_path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        asked = reports_off2(binary, loader, host) if arch == "aarch64" else False
        known[key] = {"version": _version(host, launcher), "reports_off2": asked}
        known_path.parent.mkdir(parents=True, exist_ok=True)
        staging = known_path.with_name(f".{known_path.name}.{os.getpid()}")
        staging.write_text(json.dumps(known, indent=2) + "\n")
        staging.replace(known_path)
    return QemuBuild(name, binary, known[key]["version"], known[key]["reports_off2"], loader)


def known_builds(arch: str = "aarch64") -> list[QemuBuild]:
    """Every build `lab doctor` and `lab qemu list` show: Debian's, then the lab's own for this machine."""
    builds = []
    for chosen in (DEBIAN, *(str(p) for p in patched_binaries(arch))):
        with contextlib.suppress(SetupError, UsageError):
            build = describe_build(chosen, arch)
            builds.append(build if chosen == DEBIAN else QemuBuild(PATCHED, build.path, build.version,
                                                                    build.reports_off2))
    return builds


def build_json(build: QemuBuild) -> dict[str, Any]:
    return {**asdict(build), "path": str(build.path), "loader": str(build.loader) if build.loader else None}


def build_records() -> list[dict[str, Any]]:
    """What `lab qemu list` shows of the lab's own builds, for every target."""
    root = builds_root()
    if not root.is_dir():
        return []
    records = []
    for directory in sorted(root.iterdir()):
        record = directory / "build.json"
        if record.is_file():
            records.append({**json.loads(record.read_text()), "path": str(directory / "bin" / "qemu-system-aarch64")})
    return records
