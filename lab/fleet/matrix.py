"""Matrix files: every scenario on every kernel, PSCI personality, accelerator, QEMU build and host, as cells.

The model only: what a matrix file says, validated with one-line errors, and the cells it expands
into. Running them is lab.fleet.run's job, through an engine (lab.fleet.engine).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.image.recipe import DEFAULT_IMAGE, DEFAULT_KERNEL, DEFAULT_SYSTEM_IMAGE
from lab.paths import load_schema
from lab.scenario.model import Scenario, find_scenario
from lab.vocabulary import guest_arch
from lab.yaml_file import first_schema_error, read_yaml, schema_message

_SCHEMA = load_schema("matrix")
_PATTERN_HINTS = {"kernels": "is neither `default` nor a Debian kernel as linux-image-…=VERSION",
                  "hosts": "is neither `local`, `ssh://USER@HOST:PORT` nor `kvm-host[:linux-image-…=VERSION]`",
                  "name": "is not a name of lower-case letters, digits and dashes",
                  "qemus": "is neither a QEMU build's name nor a path (control characters are not allowed)"}
MAX_DIR_NAME = 120
"""Longest cell directory name: room under the 255 bytes of a file name for the engines' suffixes."""


@dataclass(frozen=True)
class Cell:
    """One run of a matrix: a scenario on one kernel, with the PSCI, accelerator, QEMU and host overrides
    (None: none)."""

    scenario: Scenario
    kernel: str = DEFAULT_KERNEL
    psci: str | None = None
    accel: str | None = None
    qemu: str | None = None
    host: str | None = None
    """As the matrix names it (see HostSpec): `ssh://…`, `kvm-host`, `kvm-host:linux-image-…=VERSION`."""

    @property
    def id(self) -> str:
        """`hibernate-resume[kernel=default,psci=kvm]`: the scenario and the dimensions the matrix sets."""
        dimensions = {"kernel": self.kernel, "psci": self.psci, "accel": self.accel, "qemu": self.qemu,
                      "host": self.host}
        return f"{self.scenario.name}[{','.join(f'{k}={v}' for k, v in dimensions.items() if v is not None)}]"

    @property
    def dir_name(self) -> str:
        """The id as a directory name that needs no quoting in a shell; one too long for a file name (a QEMU
        binary's long path) is cut short and told apart from the others by a hash of the whole id."""
        name = re.sub(r"[^A-Za-z0-9.+=_-]+", ".", self.id).strip(".")
        if len(name) <= MAX_DIR_NAME:
            return name
        return f"{name[: MAX_DIR_NAME - 13]}.{hashlib.sha256(self.id.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Dimensions:
    """What a matrix varies besides the scenario; None stands for "the scenario's own" or "the best one"."""

    kernels: tuple[str, ...] = (DEFAULT_KERNEL,)
    personalities: tuple[str | None, ...] = (None,)
    accelerators: tuple[str | None, ...] = (None,)
    qemus: tuple[str | None, ...] = (None,)
    hosts: tuple[str | None, ...] = (None,)

    def cells(self, scenario: Scenario) -> list[Cell]:
        return [Cell(scenario, *values) for values in
                itertools.product(self.kernels, self.personalities, self.accelerators, self.qemus, self.hosts)]


@dataclass(frozen=True)
class Matrix:
    """A matrix file, read and validated: its scenarios (loaded) and what varies over them."""

    name: str
    path: Path
    scenarios: tuple[Scenario, ...]
    dimensions: Dimensions
    arch: str = "arm64"
    workers: int = 1
    slurm: Mapping[str, Any] = field(default_factory=dict)
    """The file's `slurm` section, for lab.fleet.slurm_settings.load_settings."""

    def cells(self) -> list[Cell]:
        return [cell for scenario in self.scenarios for cell in self.dimensions.cells(scenario)]


def _scenario_reference(entry: str, base: Path) -> str:
    """Scenario files in a matrix are relative to the matrix file; bare names are shipped scenarios.

    `../` may lead anywhere: a scenario file is only read, and only its validated `name` becomes a path.
    """
    if Path(entry).suffix in (".yaml", ".yml") or "/" in entry:
        return str(base / entry)
    return entry


def load_matrix(path: Path) -> Matrix:
    """Read and validate a matrix file; every error names the file, the line and the field."""
    file = read_yaml(path, "matrix")
    file.validate(_SCHEMA, _PATTERN_HINTS)
    data = file.data
    name = data.get("name", path.stem)
    if "name" not in data and first_schema_error(_SCHEMA["properties"]["name"], name) is not None:
        raise file.error((), f"the file's name {name!r} cannot name the matrix directory (lower-case letters, "
                             "digits and dashes, at most 64): give the matrix a `name`")
    arch = data.get("arch", "arm64")
    scenarios: list[Scenario] = []
    for index, entry in enumerate(data["scenarios"]):
        try:
            scenario = find_scenario(_scenario_reference(entry, path.parent))
        except UsageError as problem:
            raise file.error(("scenarios", index), str(problem)) from None
        if any(known.name == scenario.name for known in scenarios):
            raise file.error(("scenarios", index), f"scenario {scenario.name} is listed twice")
        if scenario.arches and guest_arch(arch) not in {guest_arch(known) for known in scenario.arches}:
            raise file.error(("scenarios", index),
                             f"scenario {scenario.name} is for {', '.join(scenario.arches)} guests only, not {arch}")
        scenarios.append(scenario)
    return Matrix(
        name=name,
        path=path,
        scenarios=tuple(scenarios),
        dimensions=Dimensions(
            kernels=tuple(data["kernels"]),
            personalities=tuple(data.get("personalities", (None,))),
            accelerators=tuple(data.get("accelerators", (None,))),
            qemus=tuple(data.get("qemus", (None,))),
            hosts=tuple(None if host == "local" else host for host in data.get("hosts", ("local",))),
        ),
        arch=arch,
        workers=data.get("workers", 1),
        slurm=data.get("slurm", {}),
    )


def check_dimension(name: str, value: Any, given_as: str) -> None:
    """Validate a field given outside a matrix file (a command-line option) as the schema would in one."""
    error = first_schema_error(_SCHEMA["properties"][name], value)
    if error is not None:
        raise UsageError(f"{given_as}: {schema_message(error, name, _PATTERN_HINTS)}")


def image_name(scenario: Scenario, arch: str) -> str:
    """The image recipe a cell boots; its kernel dimension replaces that image's kernel."""
    defaults = DEFAULT_SYSTEM_IMAGE if scenario.system else DEFAULT_IMAGE
    return scenario.image or defaults[guest_arch(arch).debian]


@dataclass(frozen=True)
class HostSpec:
    """A `hosts` entry that the matrix starts itself: an emulated KVM host image, with a pinned kernel or not."""

    image: str
    kernel_deb: str | None

    @classmethod
    def parse(cls, entry: str) -> HostSpec | None:
        """The host to start for an entry; None for `ssh://…`, a host that is already running."""
        if entry.startswith("ssh://"):
            return None
        image, _, kernel_deb = entry.partition(":")
        return cls(image, kernel_deb or None)
