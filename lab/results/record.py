"""One indexed run: the facts of a run directory's result.json that nights are compared on.

A matrix cell is a run with its matrix, night (the matrix directory) and cell id; a cell retried
after a failure leaves one record per attempt. Records are built from the directories alone, so
the index can always be rebuilt from them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.results.timings import kernel_timings
from lab.rundir import RunDirectory, read_json

MATRIX_FILE = "matrix.json"
_DIR_TIME = re.compile(r"(\d{8}T\d{6})")
_KERNEL_PACKAGE = re.compile(r"^linux-(?:image|binary)-")


BISECT_ABORT = 128
"""`git bisect run` stops at any exit status above 127: the lab was asked something it cannot do."""


class Status(StrEnum):
    """A run's verdict: FAIL is the guest's behaviour, ERROR the lab's or its infrastructure's."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"

    @property
    def bisect_exit(self) -> int:
        """`git bisect run`'s meaning: 0 good, 1 bad, 125 this revision cannot be tested (skip it)."""
        return {Status.PASS: 0, Status.FAIL: 1, Status.ERROR: 125}[self]


@dataclass(frozen=True)
class Night:
    """The matrix run a cell belongs to: its matrix's name and its directory's name."""

    matrix: str
    name: str
    started: str


@dataclass
class RunRecord:
    """What the store keeps of one run; `classes` are `boot:class`, `findings` the witnesses that disagree."""

    run_dir: str
    cell: str
    scenario: str
    status: Status
    reason: str
    started: str
    matrix: str | None = None
    night: str | None = None
    attempt: int = 0
    arch: str | None = None
    kernel_package: str | None = None
    kernel_version: str | None = None
    kernel_release: str | None = None
    qemu: str | None = None
    off2_contract: str | None = None
    accel: str | None = None
    psci: str | None = None
    lab_host: str | None = None
    host_kernel: str | None = None
    lab_version: str | None = None
    seconds: float | None = None
    hibernate_seconds: float | None = None
    resume_seconds: float | None = None
    classes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    kernel_timings: dict[str, float] = field(default_factory=dict)
    """The guest kernel's own clock (lab.results.timings): hibernate, image write, restore."""

    def to_row(self) -> dict[str, Any]:
        return asdict(self) | {"status": str(self.status)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunRecord:
        values = {name: row[name] for name in cls.__dataclass_fields__}
        return cls(**values | {"status": Status(row["status"])})

    @property
    def changed_inputs(self) -> dict[str, str | None]:
        """What may explain a change between two runs of a cell."""
        return {"kernel": self.kernel_version or self.kernel_release, "QEMU build": self.qemu,
                "PSCI personality": self.psci, "accelerator": self.accel, "lab version": self.lab_version,
                "host kernel": self.host_kernel}


def _started(run_dir: Path) -> str:
    """When a run started: the UTC time in its directory's name, else when its result was written."""
    match = _DIR_TIME.search(run_dir.name)
    if match:
        return datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC).isoformat(timespec="seconds")
    stamp = (run_dir / "result.json").stat().st_mtime
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def _phase_seconds(phases: list[dict[str, Any]], step: str, outcome: str | None = None) -> float | None:
    """The first phase of `step` (with `outcome`): a hibernation's time, a resume's boot time."""
    for phase in phases:
        found = (phase.get("outcome") or {}).get("outcome") if isinstance(phase.get("outcome"), dict) else None
        if phase.get("step") == step and (outcome is None or found == outcome):
            seconds = phase.get("seconds")
            return float(seconds) if isinstance(seconds, int | float) else None
    return None


def _kernel(environment: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    image = environment.get("image") or {}
    package: dict[str, Any] = next((entry for entry in image.get("inputs") or []
                    if _KERNEL_PACKAGE.match(str(entry.get("package", "")))), {})
    return package.get("package"), package.get("version"), image.get("kernel_release")


def read_record(run_dir: Path, cell: str | None = None, night: Night | None = None, attempt: int = 0) -> RunRecord:
    """The record of a finished run directory; one without a readable result.json is a usage error."""
    result = RunDirectory(run_dir).read_result()
    if result is None or not isinstance(result.get("verdict"), dict):
        raise UsageError(f"{run_dir} has no readable result.json: not a finished run directory")
    verdict, environment = result["verdict"], result.get("environment") or {}
    status = verdict.get("status")
    if status not in set(Status):
        raise UsageError(f"{run_dir}/result.json: unknown verdict status {status!r}")
    phases = [phase for phase in result.get("phases") or [] if isinstance(phase, dict)]
    power_offs = [entry for entry in verdict.get("power_offs") or [] if isinstance(entry, dict)]
    package, version, release = _kernel(environment)
    image_inputs = (environment.get("image") or {}).get("inputs") or [{}]
    scenario = str((result.get("scenario") or {}).get("name", run_dir.name))
    return RunRecord(
        run_dir=str(run_dir.resolve()), cell=cell or scenario, scenario=scenario, status=Status(status),
        reason=str(verdict.get("reason", "")), started=night.started if night else _started(run_dir),
        matrix=night.matrix if night else None, night=night.name if night else None, attempt=attempt,
        arch=image_inputs[0].get("arch"), kernel_package=package, kernel_version=version, kernel_release=release,
        qemu=environment.get("qemu"), off2_contract=environment.get("off2_contract"),
        accel=environment.get("accel"), psci=environment.get("psci_personality"),
        lab_host=environment.get("lab_host"), host_kernel=str(environment.get("host", "")).rpartition(" ")[2] or None,
        lab_version=environment.get("lab"), seconds=result.get("seconds"),
        hibernate_seconds=_phase_seconds(phases, "hibernate"), resume_seconds=_phase_seconds(phases, "boot", "resumed"),
        classes=[f"{entry.get('boot')}:{entry.get('class')}" for entry in power_offs],
        findings=[f"{entry.get('boot')}: {finding}" for entry in power_offs
                  for finding in entry.get("disagreements") or []],
        phases=[{key: phase.get(key) for key in ("step", "label", "status", "seconds")} for phase in phases],
        kernel_timings=kernel_timings(run_dir))


def read_matrix(directory: Path) -> list[RunRecord]:
    """Every attempt of every cell of a matrix directory that ran; cells that never started have none."""
    summary = read_json(directory / MATRIX_FILE)
    if summary is None or not isinstance(summary.get("cells"), list):
        raise UsageError(f"{directory}/{MATRIX_FILE} is missing or unreadable: not a matrix directory")
    night = Night(str(summary.get("matrix", directory.name)), directory.name,
                  str(summary.get("started") or _started(directory)))
    records = []
    for cell in summary["cells"]:
        attempts = [cell.get("run_dir"), *(cell.get("retries") or [])]
        for number, run_dir in enumerate(attempts):
            if run_dir:
                records.append(_cell_record(directory / Path(run_dir).name, cell, night, number))
    return records


def _cell_record(run_dir: Path, cell: dict[str, Any], night: Night, attempt: int) -> RunRecord:
    """A cell's run; one whose process died before writing result.json is the ERROR the matrix recorded."""
    if attempt == 0 and not (run_dir / "result.json").exists() and cell.get("status") != "PASS":
        return RunRecord(run_dir=str(run_dir.resolve()), cell=str(cell["id"]), scenario=str(cell.get("scenario")),
                         status=Status.ERROR, reason=str(cell.get("reason", "")), started=night.started,
                         matrix=night.matrix, night=night.name)
    return read_record(run_dir, str(cell["id"]), night, attempt)


def read_directory(directory: Path) -> list[RunRecord]:
    """A run directory, a matrix directory, or a runs directory holding any number of both."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    if (directory / MATRIX_FILE).exists():
        return read_matrix(directory)
    if (directory / "result.json").exists() or (directory / "scenario.json").exists():
        return [read_record(directory)]
    children = sorted(child for child in directory.iterdir()
                      if child.is_dir() and any((child / name).exists() for name in
                                                (MATRIX_FILE, "result.json", "scenario.json")))
    if not children:
        raise UsageError(f"{directory} holds no run or matrix directory (none has result.json or matrix.json)")
    return [record for child in children for record in read_directory(child)]
