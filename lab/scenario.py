"""Scenario files: ordered steps with parameters and expectations, validated against a schema.

Errors name the file, the line and the field, so that someone who never read the lab's
code can fix their scenario from the message alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lab.errors import UsageError
from lab.paths import SCENARIOS_DIR

_SCHEMA = json.loads((Path(__file__).parent / "schemas/scenario.json").read_text())
DEFAULT_PERSONALITY = "kvm"


class _Lined(dict):
    line = 0


class _LinedList(list):
    line = 0


class _LineLoader(yaml.SafeLoader):
    """A safe loader whose mappings and sequences remember the line they start on."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> _Lined:
        mapping = _Lined(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        return mapping

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> _LinedList:
        sequence = _LinedList(super().construct_sequence(node, deep=True))
        sequence.line = node.start_mark.line + 1
        return sequence


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _LineLoader.construct_sequence)


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
    source: dict[str, Any] = field(default_factory=dict, compare=False)


def _normalise(steps: list[Any]) -> None:
    """Allow `- mark` as shorthand for `- mark: {}`, keeping line numbers."""
    for index, item in enumerate(steps):
        if isinstance(item, str):
            replacement = _Lined({item: _Lined()})
            replacement.line = getattr(steps, "line", 0)
            steps[index] = replacement
        elif isinstance(item, dict):
            for kind, params in list(item.items()):
                if params is None:
                    item[kind] = _Lined()
                    item[kind].line = getattr(item, "line", 0)
                elif kind == "repeat" and isinstance(params, dict) and isinstance(params.get("steps"), list):
                    _normalise(params["steps"])


def _line_of(data: Any, path: list[Any]) -> int:
    line = getattr(data, "line", 0)
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        line = getattr(node, "line", line) or line
    return line


def _steps(items: list[dict[str, Any]]) -> tuple[Step, ...]:
    built = []
    for item in items:
        ((kind, params),) = item.items()
        children = _steps(params["steps"]) if kind == "repeat" else ()
        built.append(Step(kind, dict(params), getattr(item, "line", 0), children))
    return tuple(built)


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.load(path.read_text(), Loader=_LineLoader)
    except OSError as error:
        raise UsageError(f"cannot read scenario {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UsageError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from error
    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        _normalise(data["steps"])
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_SCHEMA).iter_errors(data))
    if error is not None:
        location = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise UsageError(f"{path}:{_line_of(data, list(error.absolute_path))}: {location}: {error.message}")
    return Scenario(
        name=data["name"],
        description=" ".join(data["description"].split()),
        path=path,
        steps=_steps(data["steps"]),
        psci=data.get("psci", DEFAULT_PERSONALITY),
        image=data.get("image"),
        memory_mib=data.get("memory_mib", 1024),
        cpus=data.get("cpus", 2),
        arches=tuple(data.get("arches", ())),
        source=json.loads(json.dumps(data)),
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
