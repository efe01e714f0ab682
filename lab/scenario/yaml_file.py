"""YAML files validated against a JSON schema, with errors that name the file, line and field.

Scenario and matrix files are written by people who never read the lab's code; the error
message alone has to tell them where to look and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from lab.errors import UsageError

FieldPath = tuple[Any, ...]


def _node_lines(node: yaml.Node, path: FieldPath = ()) -> dict[FieldPath, int]:
    """The line of every mapping key and sequence item, by its path in the document."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines |= _node_lines(value, (*path, key.value))
            lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines |= _node_lines(item, (*path, index))
    return lines


@dataclass(frozen=True)
class YamlFile:
    """A parsed YAML document and the line of each of its fields."""

    path: Path
    data: Any
    lines: dict[FieldPath, int]

    def line(self, where: FieldPath) -> int:
        """The line of the deepest part of `where` the file has."""
        prefixes = (tuple(where[:depth]) for depth in range(len(where), -1, -1))
        return next((self.lines[prefix] for prefix in prefixes if prefix in self.lines), 1)

    def error(self, where: FieldPath, message: str) -> UsageError:
        """`FILE:LINE: FIELD: message`."""
        location = "/".join(str(part) for part in where) or "(top level)"
        return UsageError(f"{self.path}:{self.line(where)}: {location}: {message}")

    def validate(self, schema: dict[str, Any], hints: dict[str, str] | None = None) -> None:
        """Raise the most relevant schema error; `hints` say in words what a `pattern` field wants."""
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(self.data))
        if error is None:
            return
        where = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            where += sorted(set(error.instance) - set(error.schema.get("properties", {})))[:1]
        raise self.error(tuple(where), schema_message(error, str(where[0]) if where else "", hints))


def schema_message(error: jsonschema.ValidationError, field: str, hints: dict[str, str] | None = None) -> str:
    """The schema's message, or for a `pattern` what the field wants in words rather than a regex."""
    hint = (hints or {}).get(field) if error.validator == "pattern" else None
    return f"{error.instance!r} {hint}" if hint else error.message


def read_yaml(path: Path, what: str) -> YamlFile:
    """Parse `path` safely; unreadable files and YAML syntax errors are one-line usage errors."""
    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"cannot read {what} {path}: {error.strerror}") from error
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UsageError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from error
    return YamlFile(path, data, _node_lines(node) if node is not None else {})
