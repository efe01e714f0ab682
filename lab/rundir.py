"""The run directory: where every file of a run lives, and the one reader and writer of each kind.

A run directory holds `scenario.json`, `events.jsonl`, the swap disk, `result.json`, `junit.xml`,
`report.html`, `reproduce.sh` and, per boot (QEMU process) NAME: `console-NAME.log`,
`qmp-NAME.jsonl`, `psci-NAME.jsonl`, `machine-NAME.json` (the typed machine spec it was launched
from), `qemu-NAME.cmdline` (the command, for people), `qemu-NAME.stderr` and `boot-NAME.json`
(how the process ended). Every other module asks this one for those paths and contents.

`result.json` is at schema version 3: version 1 nested each step's label and line inside a
`params` object inside `params`; version 2 gives phases flat `step`, `line`, `label`,
`expectations` fields, as the typed step events do; version 3 classes an x86_64 guest's hibernation
by what the platform was told, ACPI S4 (`hibernate-s4`), where version 2 called it `hibernate-off2`,
a PSCI name, and records the guest's arch (`environment.guest_arch`) and each check's `kind` and
`boot`. `read_result` reads a version-2 file as version 3 (see `upgraded_result`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab.errors import SetupError, UsageError
from lab.events import Event, read_events
from lab.lines import last_lines

RESULT_SCHEMA_VERSION = 3
S4_RENAMED = "classed hibernate-off2 when written (result.json version 2); ACPI S4 is hibernate-s4 since version 3"
MAX_DIR_NAME = 200
ROOM_BYTES = 1 << 20
"""Kept free for result.json, junit.xml, report.html and the last events: a few hundred KiB at most."""
"""Longest run or matrix directory name in bytes; a file name has 255, `-N` and a boot's files need a few."""
_BOOT_FILE = re.compile(r"^(?:boot|console|qmp|machine)-(?P<name>.+?)\.(?:json|log|jsonl)$")


def read_console_file(path: Path) -> list[str]:
    """A console log as lines; bytes that are not UTF-8 are replaced, carriage returns dropped.

    Lines end at newlines only, as the serial console's reader splits them: a guest's form feed or
    U+2028 stays inside its line (str.splitlines would break it there).
    """
    try:
        lines = path.read_text(errors="replace").replace("\r", "").split("\n")
    except OSError:
        return []
    return lines[:-1] if lines[-1] == "" else lines


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a line cut short by a killed run is skipped, not fatal."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def upgraded_result(result: dict[str, Any]) -> dict[str, Any]:
    """A version-2 result.json as version 3 has it: an x86_64 guest's (a qemu-system-x86_64 run's) ACPI S4
    hibernation is `hibernate-s4`, noted as renamed. Other versions are returned as they are."""
    if result.get("schema_version") != 2:
        return result
    environment = result.get("environment") or {}
    x86 = str((environment.get("qemu_build") or {}).get("path", "")).endswith("qemu-system-x86_64")
    for power_off in (result.get("verdict") or {}).get("power_offs") or []:
        if x86 and power_off.get("class") == "hibernate-off2":
            power_off["class"] = "hibernate-s4"
            power_off["notes"] = [*power_off.get("notes", []), S4_RENAMED]
    return {**result, "schema_version": RESULT_SCHEMA_VERSION, "upgraded_from": 2}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def unique_dir(root: Path, stem: str) -> Path:
    """A new directory `root/stem` (or `stem-N`), never one another run already uses.

    `stem` is made from names in files people write (a scenario's, a matrix's): it must be one plain file
    name, so that nothing a run writes lands outside `root`. The schemas say so first; this is the last word.
    """
    if stem in ("", ".", "..") or "/" in stem or "\0" in stem or len(stem.encode()) > MAX_DIR_NAME:
        raise UsageError(f"{stem[:80]!r} cannot name a directory under {root}")
    for attempt in range(100):
        candidate = root / (stem + (f"-{attempt}" if attempt else ""))
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise SetupError(f"cannot create a directory under {root}: {error.strerror}") from error
    raise SetupError(f"cannot create a directory {stem} under {root}")


@dataclass
class BootRecord:
    """What one QEMU process did, as seen by the VMM's channels: the raw material for witnesses."""

    name: str
    command: list[str]
    console_log: Path
    qmp_log: Path
    launched_at: float
    exit_code: int | None = None
    exited_at: float | None = None
    killed_by_lab: bool = False
    vmm_stopped: bool = False
    """QEMU was found stopped (SIGSTOP: not running the guest at all) when the lab had to kill it."""
    qmp_events: list[dict[str, Any]] = field(default_factory=list)
    console_lines: list[tuple[float, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": shlex.join(self.command),
            "console_log": self.console_log.name,
            "qmp_log": self.qmp_log.name,
            "launched_at": round(self.launched_at, 3),
            "exited_at": None if self.exited_at is None else round(self.exited_at, 3),
            "exit_code": self.exit_code,
            "killed_by_lab": self.killed_by_lab,
            "vmm_stopped": self.vmm_stopped,
        }


def describe_exit(code: int) -> str:
    """`killed by SIGKILL` or `exited with status 1`: how a process ended, in words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass(frozen=True)
class BootFiles:
    """The files of one boot (one QEMU process) in a run directory."""

    directory: Path
    name: str

    @property
    def number(self) -> int:
        digits = re.search(r"(\d+)$", self.name)
        return int(digits.group(1)) if digits else 0

    @property
    def console(self) -> Path:
        return self.directory / f"console-{self.name}.log"

    @property
    def qmp(self) -> Path:
        return self.directory / f"qmp-{self.name}.jsonl"

    @property
    def psci(self) -> Path:
        return self.directory / f"psci-{self.name}.jsonl"

    @property
    def machine(self) -> Path:
        return self.directory / f"machine-{self.name}.json"

    @property
    def cmdline(self) -> Path:
        return self.directory / f"qemu-{self.name}.cmdline"

    @property
    def stderr(self) -> Path:
        return self.directory / f"qemu-{self.name}.stderr"

    @property
    def record(self) -> Path:
        return self.directory / f"boot-{self.name}.json"

    def write_machine(self, spec: dict[str, Any], command: list[str]) -> None:
        """The typed spec QEMU was launched from (reproduce.sh rebuilds the command from it), and the command."""
        write_json(self.machine, spec)
        self.cmdline.write_text(shlex.join(command) + "\n")

    def write_record(self, record: BootRecord) -> None:
        write_json(self.record, record.to_json())

    def read_machine(self) -> dict[str, Any] | None:
        return read_json(self.machine)

    def read_record(self) -> dict[str, Any] | None:
        return read_json(self.record)

    def read_console(self) -> list[str]:
        return read_console_file(self.console)

    def read_qmp(self) -> list[dict[str, Any]]:
        return read_jsonl(self.qmp)

    def read_psci(self) -> list[dict[str, Any]]:
        return read_jsonl(self.psci)

    def read_stderr(self) -> str:
        try:
            return self.stderr.read_text(errors="replace")
        except OSError:
            return ""

    def stderr_tail(self) -> str:
        """QEMU's last non-blank stderr lines on one line: what a refusal quotes when QEMU died at start."""
        return " ".join(last_lines(self.read_stderr()))


class RunDirectory:
    """One run's directory; see the module docstring for what it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, root: Path, stem: str) -> RunDirectory:
        return cls(unique_dir(root, stem))

    @property
    def room(self) -> Path:
        return self.path / ".room"

    def keep_room(self, size: int = ROOM_BYTES) -> None:
        """Set aside `size` bytes for the results, so a run on a filesystem that fills up still writes them."""
        with contextlib.suppress(OSError), self.room.open("wb") as room:
            os.posix_fallocate(room.fileno(), 0, size)

    def free_room(self) -> None:
        self.room.unlink(missing_ok=True)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def scenario(self) -> Path:
        return self.path / "scenario.json"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def junit(self) -> Path:
        return self.path / "junit.xml"

    @property
    def html(self) -> Path:
        return self.path / "report.html"

    @property
    def reproducer(self) -> Path:
        return self.path / "reproduce.sh"

    @property
    def reproducer_missing(self) -> Path:
        return self.path / "reproduce.missing"

    @property
    def output_log(self) -> Path:
        """What `lab scenario` printed, for runs started by a matrix engine rather than a terminal."""
        return self.path / "output.log"

    def swap(self, disk_format: str) -> Path:
        return self.path / f"swap.{disk_format}"

    def boot(self, name: str) -> BootFiles:
        return BootFiles(self.path, name)

    def boots(self) -> list[BootFiles]:
        """Every boot that left a file, in launch order."""
        names = {match.group("name") for p in self.path.glob("*-*") if (match := _BOOT_FILE.match(p.name))}
        return sorted((self.boot(name) for name in names), key=lambda boot: boot.number)

    def files(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_file() and p != self.result)

    def write_scenario(self, source: dict[str, Any]) -> None:
        write_json(self.scenario, source)

    def write_result(self, result: dict[str, Any]) -> None:
        write_json(self.result, {"schema_version": RESULT_SCHEMA_VERSION, **result})

    def read_scenario(self) -> dict[str, Any] | None:
        return read_json(self.scenario)

    def read_result(self) -> dict[str, Any] | None:
        result = read_json(self.result)
        return upgraded_result(result) if result is not None else None

    def read_events(self) -> list[Event]:
        return read_events(self.events)
