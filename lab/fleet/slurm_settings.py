"""Slurm settings: the host classes a matrix's cells go to and how they reach them (the lab config's and the
matrix file's `slurm` sections), and what a cell asks of a node (time, CPUs, memory). docs/slurm.md."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.paths import load_schema
from lab.scenario.model import Scenario, Step
from lab.scenario.steps import DEFAULT_TIMEOUTS
from lab.vocabulary import guest_arch
from lab.yaml_file import read_yaml

LAB_COMMAND = (sys.executable, "-m", "lab.cli")
"""How a node starts the lab: the controller's own interpreter, so the lab must live at the same path there."""
CONFIG_ENV = "LAB_CONFIG"
DEFAULT_START_TIMEOUT = 600.0
SETUP_SECONDS = 300.0
UNTIMED_STEP_SECONDS = 30.0
QEMU_OVERHEAD_MIB = 512


def config_path() -> Path:
    """The lab's config file: `$LAB_CONFIG`, else `$XDG_CONFIG_HOME/hibernation-lab/config.yaml`, else
    `~/.config/hibernation-lab/config.yaml`."""
    if explicit := os.environ.get(CONFIG_ENV):
        return Path(explicit)
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "hibernation-lab" / "config.yaml"


@dataclass(frozen=True)
class HostClass:
    """Where a kind of cell may run: the feature constraint and the partition (None: leave it to Slurm)."""

    name: str
    feature: str | None
    partition: str | None

    def options(self) -> list[str]:
        return [*(["-C", self.feature] if self.feature else []), *(["-p", self.partition] if self.partition else [])]


@dataclass(frozen=True)
class SlurmSettings:
    """The `slurm` sections of the lab config and the matrix file, merged; `partition` is `--partition`."""

    classes: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    partition: str | None = None
    start_timeout: float = DEFAULT_START_TIMEOUT
    stage: Path | None = None
    copy_back: str | None = None

    def host_class(self, name: str) -> HostClass:
        """A class not configured has the feature and the partition of its own name."""
        given = self.classes.get(name, {})
        return HostClass(name, given.get("feature", name), self.partition or given.get("partition", name))


def host_class_name(accel: str | None, arch: str) -> str:
    """Cells forced onto KVM need a host of their own arch with KVM (`kvm_arm64`); any other runs on TCG."""
    return f"kvm_{guest_arch(arch).debian}" if accel == "kvm" else "tcg"


def _config_section() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    file = read_yaml(path, "lab config")
    schema = {"type": ["object", "null"], "additionalProperties": False,
              "properties": {"slurm": load_schema("matrix")["properties"]["slurm"]}}
    file.validate(schema)
    return dict((file.data or {}).get("slurm", {}))


def load_settings(matrix_section: Mapping[str, Any] | None = None, partition: str | None = None) -> SlurmSettings:
    """Defaults, then the lab config's `slurm` section, then the matrix file's, then `--partition` for all."""
    classes: dict[str, dict[str, str | None]] = {}
    merged: dict[str, Any] = {}
    for section in (_config_section(), dict(matrix_section or {})):
        for name, given in section.pop("classes", {}).items():
            classes.setdefault(name, {}).update(given)
        merged.update(section)
    if ("stage" in merged) != ("copy_back" in merged):
        raise UsageError("slurm settings: `stage` and `copy_back` go together (see docs/slurm.md)")
    return SlurmSettings(classes, partition, float(merged.get("start_timeout", DEFAULT_START_TIMEOUT)),
                         Path(merged["stage"]) if "stage" in merged else None, merged.get("copy_back"))



def _step_seconds(step: Step) -> float:
    if step.kind == "repeat":
        return float(step.params["times"] * sum(_step_seconds(child) for child in step.children))
    return float(step.params.get("timeout", DEFAULT_TIMEOUTS.get(step.kind, UNTIMED_STEP_SECONDS)))


def time_limit_minutes(scenario: Scenario) -> int:
    """Every wait of a run is bounded by its step's timeout: their sum, plus set-up, bounds the run."""
    return math.ceil((SETUP_SECONDS + sum(_step_seconds(step) for step in scenario.steps)) / 60)


def resources(scenarios: Iterable[Scenario]) -> list[str]:
    """Time, CPUs and memory for the most demanding of `scenarios`: QEMU's threads and the guest's RAM."""
    chosen = list(scenarios)
    return [f"--time={max(time_limit_minutes(s) for s in chosen)}",
            f"--cpus-per-task={max(s.cpus for s in chosen)}",
            f"--mem={max(s.memory_mib for s in chosen) + QEMU_OVERHEAD_MIB}M"]
