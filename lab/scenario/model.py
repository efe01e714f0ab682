"""Scenario files: ordered steps with parameters and expectations, validated against a schema.

Errors name the file, the line and the field, so that someone who never read the lab's
code can fix their scenario from the message alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import UsageError
from lab.paths import SCENARIOS_DIR, load_schema
from lab.vocabulary import HibernateVia, ImageOn, ResumeFrom
from lab.yaml_file import YamlFile, read_yaml

_SCHEMA = load_schema("scenario")
_PATTERN_HINTS = {"name": "is not a name of lower-case letters, digits and dashes"}
DEFAULT_PERSONALITY = "kvm"
MAX_STEPS = 1000
"""Most steps one run may take, each repeat counted as often as it runs: nested repeats multiply."""


@dataclass(frozen=True)
class Step:
    """One step: its kind ("boot", "hibernate", …), parameters, and the line it is written on."""

    kind: str
    params: dict[str, Any]
    line: int
    children: tuple[Step, ...] = ()

    def describe(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "steps"}
        return self.kind + (" " + " ".join(f"{k}={v}" for k, v in shown.items()) if shown else "")


@dataclass(frozen=True, kw_only=True)
class HibernationPaths:
    """How the guest hibernates and resumes: the scenario's `hibernation` block."""

    via: HibernateVia = HibernateVia.SYSFS
    image_on: ImageOn = ImageOn.PARTITION
    resume_from: ResumeFrom = ResumeFrom.CMDLINE
    compressor: str | None = None
    image_size: int | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> HibernationPaths:
        return cls(via=HibernateVia(data.get("via", HibernateVia.SYSFS)),
                   image_on=ImageOn(data.get("image_on", ImageOn.PARTITION)),
                   resume_from=ResumeFrom(data.get("resume_from", ResumeFrom.CMDLINE)),
                   compressor=data.get("compressor"), image_size=data.get("image_size"))

    @property
    def kernel_arguments(self) -> tuple[str, ...]:
        return (f"hibernate.compressor={self.compressor}",) if self.compressor else ()


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: Path
    steps: tuple[Step, ...]
    psci: str = DEFAULT_PERSONALITY
    image: str | None = None
    memory_mib: int = 1024
    cpus: int = 2
    arches: tuple[str, ...] = ()
    kernel_trouble_quiet: float | None = None
    """Seconds of console silence after a kernel panic, Oops or BUG that end a wait; None: the lab's default."""
    uefi: bool = False
    """`firmware: uefi`: boot through UEFI firmware and a boot loader (system guests only)."""
    system: bool = False
    """`guest: system`: a whole Debian system (debian-ARCH-system) unless `image` names another."""
    hibernation: HibernationPaths = field(default_factory=HibernationPaths)
    pm_debug: bool = True
    """Boot with `pm_debug_messages loglevel=8` and hibernate with `pm_print_times` on, for the kernel's phases."""
    initcall_debug: bool = False
    """Boot with `initcall_debug` too: every initcall and the resume kernel's device callbacks timed."""
    pm_test: str | None = None
    """The /sys/power/pm_test level every hibernate step uses unless it names its own."""
    source: dict[str, Any] = field(default_factory=dict, compare=False)


def _normalise(steps: list[Any]) -> None:
    """Allow `- mark` as shorthand for `- mark: {}` (and `- mark:` with nothing after it)."""
    for index, item in enumerate(steps):
        if isinstance(item, str):
            steps[index] = {item: {}}
        elif isinstance(item, dict):
            for kind, params in item.items():
                if params is None:
                    item[kind] = {}
                elif kind == "repeat" and isinstance(params, dict) and isinstance(params.get("steps"), list):
                    _normalise(params["steps"])


def _steps(file: YamlFile, items: list[dict[str, Any]], at: tuple[Any, ...]) -> tuple[Step, ...]:
    built = []
    for index, item in enumerate(items):
        ((kind, params),) = item.items()
        where = (*at, index)
        children = _steps(file, params["steps"], (*where, kind, "steps")) if kind == "repeat" else ()
        built.append(Step(kind, dict(params), file.line(where), children))
    return tuple(built)


def _steps_taken(steps: tuple[Step, ...]) -> int:
    return sum(step.params["times"] * _steps_taken(step.children) if step.kind == "repeat" else 1 for step in steps)


def load_scenario(path: Path) -> Scenario:
    file = read_yaml(path, "scenario")
    data = file.data
    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        _normalise(data["steps"])
    file.validate(_SCHEMA, _PATTERN_HINTS)
    steps = _steps(file, data["steps"], ("steps",))
    if (taken := _steps_taken(steps)) > MAX_STEPS:
        raise file.error(("steps",), f"the repeats add up to {taken} steps; a run takes at most {MAX_STEPS}")
    return Scenario(
        name=data["name"],
        description=" ".join(data["description"].split()),
        path=path,
        steps=steps,
        psci=data.get("psci", DEFAULT_PERSONALITY),
        image=data.get("image"),
        memory_mib=data.get("memory_mib", 1024),
        cpus=data.get("cpus", 2),
        arches=tuple(data.get("arches", ())),
        kernel_trouble_quiet=data.get("kernel_trouble_quiet"),
        system=data.get("guest") == "system",
        uefi=data.get("firmware") == "uefi",
        hibernation=HibernationPaths.of(data.get("hibernation", {})),
        pm_debug=data.get("pm_debug", True),
        initcall_debug=data.get("initcall_debug", False),
        pm_test=data.get("pm_test"),
        source=data,
    )


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIOS_DIR.glob("*.yaml"))


def find_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or any scenario file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.exists():
            raise UsageError(f"no scenario file {candidate}")
        return load_scenario(candidate)
    path = SCENARIOS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in shipped_scenarios())
        raise UsageError(f"no scenario named {name_or_path!r} (known: {known})")
    return load_scenario(path)
