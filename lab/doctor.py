"""`lab doctor`: one screen saying whether this host can run the lab, and what to install if not.

Accelerators are *tried*, not guessed from /dev/kvm: each probe starts the lab's own machine
model, paused, through the lab's one launch path (Machine) with only that accelerator, and asks it
over QMP. QEMU serves QMP commands only from its main loop, which runs after the accelerator is
initialised (with a single `-accel` it exits when that fails), and `query-kvm` says whether KVM is
the one in use; a process that merely stays up proves nothing. KVM must then boot the default
image's kernel, when it is built, as it must for a run. Every probe is stopped and reaped.

Every QEMU build the lab knows (Debian's, the lab's own patched ones) is listed with what it
reports about SYSTEM_OFF2 (a bare-metal probe powers off with it and QMP shows the event:
lab.qemu.off2_probe), and the OFF2 contract that arm64 runs on it get under TCG and KVM.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.requirements import Requirement

from lab.errors import LabError
from lab.image.guest_image import GuestImage
from lab.image.recipe import DEFAULT_IMAGE
from lab.image.store import ImageStore, picked_by_runs
from lab.judge.off2_contract import contract_for
from lab.machine.accel import kvm_status, probe_accel, probe_machine, probe_spec
from lab.machine.process import Machine
from lab.qemu.builds import known_builds
from lab.vocabulary import GUEST_ARCHES as ALL_GUEST_ARCHES
from lab.vocabulary import guest_arch, host_arch

Status = Literal["ok", "warn", "missing"]
AREAS = ("host", "qemu", "accel", "system-off2", "gdbstub", "images", "python")
GUEST_ARCHES = tuple(arch.qemu for arch in ALL_GUEST_ARCHES)
MIN_QEMU_MAJOR = 10
VERSION_TIMEOUT = 10.0
GDB_PROBE_SECONDS = 3.0
RENDER_WIDTH = 110

_PACKAGE_OF = {
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
}
_BOOTSTRAP_INSTALLS = ("qemu-system-aarch64", "qemu-img", "qemu-io")
_GDB_PACKET = re.compile(rb"\$[^#]*#[0-9a-fA-F]{2}")
_VERSION = re.compile(r"version (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's screen; `fix` says exactly what to run when something is wrong."""

    area: str
    status: Status
    detail: str
    fix: str | None = None


def diagnose() -> list[Finding]:
    """Inspect this host; runs a few short QEMU probes and never leaves QEMU running."""
    findings = [_host_finding()]
    findings += [_binary_finding(name) for name in _PACKAGE_OF]
    findings += [_accel_finding(arch) for arch in GUEST_ARCHES]
    findings += _off2_findings()
    findings.append(_gdbstub_finding())
    findings += _image_findings()
    findings.append(_python_finding())
    return findings


def render(findings: list[Finding]) -> str:
    """Findings grouped by area in a fixed order, wrapped to fit one terminal screen."""
    counts = {status: sum(f.status == status for f in findings) for status in ("ok", "warn", "missing")}
    lines = [f"lab doctor: {counts['ok']} ok, {counts['warn']} warn, {counts['missing']} missing"]
    indent = " " * 22
    order = {area: index for index, area in enumerate(AREAS)}
    for finding in sorted(findings, key=lambda f: order.get(f.area, len(AREAS))):
        lines += textwrap.wrap(finding.detail, RENDER_WIDTH, initial_indent=f"{finding.status:<8} {finding.area:<12} ",
                               subsequent_indent=indent)
        if finding.fix:
            lines += textwrap.wrap(finding.fix, RENDER_WIDTH, initial_indent=f"{indent}fix: ",
                                   subsequent_indent=indent + "     ")
    return "\n".join(lines)


def _os_release() -> dict[str, str]:
    try:
        return platform.freedesktop_os_release()
    except OSError:
        return {}


def _host_finding() -> Finding:
    host = host_arch()
    system = _os_release().get("PRETTY_NAME", "unknown OS")
    kvm_node = "present" if Path("/dev/kvm").exists() else "absent"
    pairs = "; ".join(
        f"{guest} guests {'native (KVM possible)' if guest == host else 'cross-arch (TCG only)'}"
        for guest in GUEST_ARCHES
    )
    return Finding("host", "ok", f"{host} host, {system}, kernel {platform.release()}, /dev/kvm {kvm_node}; {pairs}")


def _apt_install(binaries: tuple[str, ...]) -> str:
    """The apt command that installs these QEMU binaries (QEMU >= 10 is in backports on Debian 12)."""
    packages = " ".join(dict.fromkeys(_PACKAGE_OF[name] for name in binaries))
    release = " -t bookworm-backports" if _os_release().get("VERSION_CODENAME") == "bookworm" else ""
    return f"apt-get install{release} {packages}"


def _install_fix(binary: str) -> str:
    if binary in _BOOTSTRAP_INSTALLS:
        return f"run ./bootstrap (or: {_apt_install(_BOOTSTRAP_INSTALLS)})"
    return _apt_install((binary,))


def _qemu_version(path: str) -> tuple[str, int | None]:
    """The version text of a QEMU tool and its major number (None when unreadable)."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run --version: {error}", None
    match = _VERSION.search(done.stdout)
    if match is None:
        return f"unrecognised --version output: {done.stdout.strip()[:60]!r}", None
    text = ".".join(part for part in match.groups() if part is not None)
    return text, int(match.group(1))


def _binary_finding(binary: str) -> Finding:
    required = binary in _BOOTSTRAP_INSTALLS
    absent: Status = "missing" if required else "warn"
    path = shutil.which(binary)
    if path is None:
        purpose = "" if required else " (needed only for x86_64 guests)"
        return Finding("qemu", absent, f"{binary}: not found{purpose}", _install_fix(binary))
    version, major = _qemu_version(path)
    if major is None:
        return Finding("qemu", absent, f"{binary} ({path}): {version}", _install_fix(binary))
    if major < MIN_QEMU_MAJOR:
        return Finding("qemu", absent, f"{binary} {version} ({path}): too old, the lab needs >= {MIN_QEMU_MAJOR}",
                       _install_fix(binary))
    return Finding("qemu", "ok", f"{binary} {version} >= {MIN_QEMU_MAJOR} ({path})")


def _default_kernel(guest: str) -> Path | None:
    """The default image's kernel for `guest`, when built: KVM counts as working only if it boots it, as in runs."""
    image = ImageStore().latest(DEFAULT_IMAGE[guest_arch(guest).debian])
    return image.kernel if image else None


def _accel_finding(guest: str) -> Finding:
    binary = f"qemu-system-{guest}"
    path = shutil.which(binary)
    kvm_allowed, kvm_reason = kvm_status(guest, _default_kernel(guest))
    lab_pick = "kvm" if kvm_allowed else "tcg"
    if path is None:
        detail = f"{guest} guests: not probed, {binary} not found (the lab would pick {lab_pick}: {kvm_reason})"
        return Finding("accel", "missing" if guest == "aarch64" else "warn", detail, _install_fix(binary))
    tcg = probe_accel(Path(path), "tcg", guest)
    tcg_text = "TCG works" if tcg.works else f"TCG fails ({tcg.error})"
    kvm_text = "KVM works" if kvm_allowed else f"KVM unusable ({kvm_reason})"
    detail = f"{guest} guests: {tcg_text}; {kvm_text}; the lab picks {lab_pick.upper()}"
    if kvm_allowed or tcg.works:
        return Finding("accel", "ok", detail)
    status: Status = "missing" if guest == "aarch64" else "warn"
    return Finding("accel", status, detail, _install_fix(binary))


def _off2_findings() -> list[Finding]:
    """Each known QEMU build and the contracts runs on it get (lab.judge.off2_contract), as runs pick them."""
    findings = []
    builds = known_builds("aarch64")
    for build in builds:
        tcg = contract_for("aarch64", "tcg", not build.reports_off2, build.off2_reporting)
        kvm = contract_for("aarch64", "kvm", False, build.off2_reporting)
        layer = "QEMU's own PSCI v1.3" if build.reports_off2 else "the lab's PSCI layer"
        findings.append(Finding("system-off2", "ok", f"{build.describe()}; arm64 guests: TCG with {layer}, "
                                                     f"contract {tcg}; KVM contract {kvm}"))
    if not any(build.reports_off2 for build in builds):
        kvm_allowed, _ = kvm_status("aarch64")
        findings.append(Finding(
            "system-off2", "warn" if kvm_allowed else "ok",
            "no QEMU here reports SYSTEM_OFF2 itself: on KVM an OFF2 power-off looks like a plain one",
            "lab qemu build (then --qemu patched)"))
    return findings


def _gdb_answers(machine: Machine) -> str | None:
    """None when the gdbstub answers a stop-reason query with a whole packet; otherwise what went wrong."""
    deadline = time.monotonic() + GDB_PROBE_SECONDS
    reply = b""
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.settimeout(GDB_PROBE_SECONDS)
            client.connect(str(machine.gdb_socket))
            client.sendall(b"$?#3f")
            while _GDB_PACKET.search(reply) is None and time.monotonic() < deadline:
                client.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = client.recv(256)
                if not chunk:
                    break
                reply += chunk
        except OSError as error:
            return f"gdbstub socket: {error}"
    return None if _GDB_PACKET.search(reply) else f"no stop-reason packet from the gdbstub (got {reply[:40]!r})"


def _gdbstub_finding() -> Finding:
    binary = "qemu-system-aarch64"
    path = shutil.which(binary)
    if path is None:
        return Finding("gdbstub", "missing", f"{binary} not found: the PSCI layer needs its -gdb",
                       _install_fix(binary))
    outcome = probe_machine(probe_spec(Path(path), "tcg", "aarch64", gdbstub=True), _gdb_answers)
    if outcome.works:
        return Finding("gdbstub", "ok", f"{binary} -gdb answers on a unix socket (the TCG PSCI layer's channel)")
    return Finding("gdbstub", "missing", f"{binary} -gdb: {outcome.error}", _install_fix(binary))


def _image_findings() -> list[Finding]:
    """The build runs pick of each cached image, and the newest build pinned to each other kernel, a line each
    (`lab images list` has their paths); the default arm64 image is the one the lab needs."""
    store = ImageStore()
    try:
        images = store.cached()
    except LabError as error:
        return [Finding("images", "missing", f"image cache {store.images} unreadable: {error}",
                        "remove the broken directory, then run ./bootstrap")]
    if not images:
        return [Finding("images", "missing", f"none: run ./bootstrap (cache: {store.images})", "run ./bootstrap")]
    picked = picked_by_runs(images)
    pinned: dict[tuple[str, str | None], GuestImage] = {}
    for image in images:
        if image.kernel_pin:
            pinned.setdefault((image.name, image.kernel_pin), image)
    shown = [*picked.values(), *pinned.values()]
    findings = []
    for image in shown:
        builds = sum(other.name == image.name and other.kernel_pin == image.kernel_pin for other in images)
        older = f", +{builds - 1} older" if builds > 1 else ""
        use = image.describe_use(picked.get(image.name) is image)
        findings.append(Finding("images", "ok", f"{image.name} {image.kernel_release} ({use}{older}), built "
                                                f"{image.manifest['built'][:10]}"))
    default = DEFAULT_IMAGE["arm64"]
    if default not in picked:
        findings.append(Finding("images", "missing", f"default image {default} not built", "run ./bootstrap"))
    return findings


def _normalised(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _required_distributions() -> list[str]:
    """The lab's runtime requirements whose markers hold here; an extra's requirements are not runtime ones."""
    requirements = [Requirement(line) for line in importlib.metadata.requires("hibernation-lab") or []]
    return [r.name for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def _python_finding() -> Finding:
    version = f"Python {platform.python_version()} ({sys.executable})"
    try:
        wanted = _required_distributions()
    except importlib.metadata.PackageNotFoundError:
        return Finding("python", "missing", f"{version}: the lab is not installed in this Python", "run ./bootstrap")
    modules_of: dict[str, list[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            modules_of.setdefault(_normalised(distribution), []).append(module)
    broken = []
    for distribution in wanted:
        modules = [m for m in modules_of.get(_normalised(distribution), []) if not m.startswith("_")]
        if not modules:
            broken.append(f"{distribution} (not installed)")
            continue
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as error:
                broken.append(f"{distribution} ({error})")
    if broken:
        return Finding("python", "missing", f"{version}: cannot import {', '.join(broken)}", "run ./bootstrap")
    return Finding("python", "ok", f"{version}: all {len(wanted)} runtime dependencies import")
