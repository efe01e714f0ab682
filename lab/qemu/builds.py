"""The QEMU builds a lab knows, and what each one reports about SYSTEM_OFF2, asked of QEMU itself.

A build that carries the lab's SYSTEM_OFF2 series (`qemu/patches/`) has the shutdown cause
`guest-hibernate` in its QAPI schema: it then emits `SUSPEND_DISK` and `SHUTDOWN` with that reason
when a guest powers off with SYSTEM_OFF2, under TCG (its own PSCI is v1.3) and KVM alike. The lab
asks each binary once for its schema over QMP (`query-qmp-schema`, about a quarter of a second)
and remembers the answer by the binary's path, size and modification time, so nobody has to say
by hand what a build can report.

Known by name: `debian` is the `qemu-system-ARCH` on PATH (Debian's package); `patched` is the
newest build `lab qemu build` made for this host. Any other value is a path to a binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

from lab.errors import SetupError, UsageError
from lab.paths import cache_root
from lab.vocabulary import host_arch

HIBERNATE_CAUSE = "guest-hibernate"
"""The ShutdownCause the lab's series adds; its presence in the schema is how a patched build is known."""
PROBE_SECONDS = 15.0
VERSION_SECONDS = 10.0
DEBIAN = "debian"
PATCHED = "patched"


@dataclass(frozen=True)
class QemuBuild:
    """One QEMU binary, its version, and whether it reports SYSTEM_OFF2 (`reason: guest-hibernate`)."""

    name: str
    path: Path
    version: str
    reports_off2: bool

    @property
    def off2_reporting(self) -> str | None:
        """The OFF2 contract this build speaks when it reports OFF2 (see lab.judge.off2_contract)."""
        return f"shutdown-reason:{HIBERNATE_CAUSE}" if self.reports_off2 else None

    def describe(self) -> str:
        reports = f"reports SYSTEM_OFF2 (SUSPEND_DISK, SHUTDOWN reason {HIBERNATE_CAUSE})" if self.reports_off2 \
            else "reports SYSTEM_OFF2 like SYSTEM_OFF (stock)"
        return f"{self.name}: {self.version}, {reports} ({self.path})"


def builds_root() -> Path:
    return cache_root() / "qemu" / "builds"


def patched_binaries(arch: str = "aarch64") -> list[Path]:
    """`qemu-system-ARCH` of every finished lab build for this host, newest first."""
    root = builds_root()
    if not root.is_dir():
        return []
    found = [d / "bin" / f"qemu-system-{arch}" for d in root.iterdir() if (d / "build.json").is_file()
             and json.loads((d / "build.json").read_text()).get("host") == host_arch()]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_binary(chosen: str | Path | None, arch: str) -> tuple[str, Path]:
    """A build's name and binary: `debian`, `patched`, a path, or None for Debian's."""
    text = str(chosen) if chosen is not None else DEBIAN
    if text == DEBIAN:
        found = shutil.which(f"qemu-system-{arch}")
        if found is None:
            raise SetupError(f"qemu-system-{arch} not found: run ./bootstrap (installs QEMU >= 10)")
        return DEBIAN, Path(found)
    if text == PATCHED:
        if arch != "aarch64":
            raise UsageError(f"the patched QEMU is built for aarch64 guests only, not {arch}")
        built = patched_binaries(arch)
        if not built:
            raise SetupError("no patched QEMU built yet: run `lab qemu build`")
        return PATCHED, built[0]
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"no QEMU binary {path}")
    if not os.access(path, os.X_OK):
        raise UsageError(f"{path} is not executable")
    return str(path), path


def qemu_version(binary: Path) -> str:
    """The version QEMU prints (`10.2.2 (Debian 1:10.2.2+ds-1)`), or `unknown` when it cannot run."""
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=VERSION_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = done.stdout.splitlines()[0] if done.stdout else ""
    return first.removeprefix("QEMU emulator version ").strip() or "unknown"


def _enum_values(schema: list[dict[str, Any]], name: str) -> set[str]:
    """The values of a QAPI enum, found by its name in `query-qmp-schema` (which masks type names)."""
    for entity in schema:
        if entity.get("meta-type") != "enum":
            continue
        values = {m["name"] for m in entity.get("members", [])} or set(entity.get("values", []))
        if name in values:
            return values
    return set()


async def _ask_schema(binary: Path, socket_path: Path) -> list[dict[str, Any]]:
    client = QMPClient("lab-probe")
    process = await asyncio.create_subprocess_exec(
        str(binary), "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S",
        "-qmp", f"unix:{socket_path}", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        accepting = asyncio.ensure_future(client.start_server_and_accept(str(socket_path)))
        exited = asyncio.ensure_future(process.wait())
        done, _ = await asyncio.wait({accepting, exited}, timeout=PROBE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        if accepting not in done:
            accepting.cancel()
            stderr = (await process.stderr.read()).decode(errors="replace").strip() if exited in done else ""
            raise SetupError(f"{binary} did not answer on QMP: {stderr.splitlines()[-1] if stderr else 'no answer'}")
        exited.cancel()
        accepting.result()
        schema = await asyncio.wait_for(client.execute("query-qmp-schema"), PROBE_SECONDS)
        with contextlib.suppress(QMPError, EOFError, OSError):
            await asyncio.wait_for(client.execute("quit"), PROBE_SECONDS)
        return schema
    finally:
        with contextlib.suppress(QMPError, EOFError, OSError):
            await client.disconnect()
        if process.returncode is None:
            process.kill()
        await process.wait()


def ask_reports_off2(binary: Path) -> bool:
    """Start `binary` with no machine, read its QAPI schema, and stop it again."""
    with tempfile.TemporaryDirectory(prefix="lab-qemu-probe-") as scratch:
        try:
            schema = asyncio.run(_ask_schema(binary, Path(scratch) / "qmp.sock"))
        except (OSError, QMPError, TimeoutError) as error:
            raise SetupError(f"cannot ask {binary} for its QMP schema: {error}") from error
    return HIBERNATE_CAUSE in _enum_values(schema, "guest-shutdown")


def _known_file() -> Path:
    return cache_root() / "qemu" / "known.json"


def describe_build(chosen: str | Path | None, arch: str) -> QemuBuild:
    """The build `chosen` names (see the module docstring), asked once per binary and remembered."""
    name, binary = resolve_binary(chosen, arch)
    real = binary.resolve()
    stat = real.stat()
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    known_path = _known_file()
    try:
        known = json.loads(known_path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = {"version": qemu_version(real), "reports_off2": ask_reports_off2(real)}
        known_path.parent.mkdir(parents=True, exist_ok=True)
        staging = known_path.with_name(f".{known_path.name}.{os.getpid()}")
        staging.write_text(json.dumps(known, indent=2) + "\n")
        staging.replace(known_path)
    return QemuBuild(name, binary, known[key]["version"], known[key]["reports_off2"])


def known_builds(arch: str = "aarch64") -> list[QemuBuild]:
    """Every build `lab doctor` and `lab qemu list` show: Debian's, then the lab's own."""
    builds = []
    for chosen in (DEBIAN, *(str(p) for p in patched_binaries(arch))):
        with contextlib.suppress(SetupError, UsageError):
            build = describe_build(chosen, arch)
            builds.append(build if chosen == DEBIAN else QemuBuild(PATCHED, build.path, build.version,
                                                                    build.reports_off2))
    return builds


def build_json(build: QemuBuild) -> dict[str, Any]:
    return {**asdict(build), "path": str(build.path)}
