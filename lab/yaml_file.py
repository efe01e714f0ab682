"""YAML files people write, validated against a JSON schema, with errors that name the file, line and field.

Scenario and matrix files, image recipes and the lab config are written by people who never read the
lab's code; the error message alone has to tell them where to look and what is wrong. They may also
come from anywhere, so the reader refuses, before building anything from them, what none of them needs
and a hostile file could use to exhaust the host: more than MAX_BYTES, text that is not UTF-8, nesting
deeper than MAX_DEPTH, and anchors and aliases (a dozen lines of aliases expand to billions of nodes
for whatever walks the data). Schemas are checked as JSON Schema means them: an integer is not a
boolean or 3.0, a number is finite, and a pattern's `$` ends the string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import yaml

from lab.errors import UsageError, printable

FieldPath = tuple[Any, ...]
MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64


class _Mark(Protocol):
    line: int


class _Refused(Exception):
    """YAML the lab will not compose: says what, and where."""

    def __init__(self, problem: str, mark: _Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = 1 if mark is None else mark.line + 1


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that stops at the first anchor or alias, or at nesting deeper than MAX_DEPTH, before it
    composes that node: no alias is ever expanded, and no walk over the data recurses without bound."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs leave it untyped
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"YAML aliases (*{event.anchor}) are not allowed", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(f"YAML anchors (&{event.anchor}) are not allowed", event.start_mark)
        if self.depth >= MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH} levels is not allowed", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


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


_ECMA_END = re.compile(r"(?<!\\)\$")


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    """`pattern` with ECMA-262's `$`, the end of the string: Python's also matches before a final newline,
    so `name: "x\\n"` would pass `^[a-z]+$` and put a newline in a run directory's name."""
    if validator.is_type(instance, "string") and not re.search(_ECMA_END.sub(r"\\Z", pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
    "integer": lambda checker, instance: type(instance) is int,
    "number": lambda checker, instance: type(instance) is int or (type(instance) is float and math.isfinite(instance)),
})
_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]  # untyped in the stubs
    jsonschema.Draft202012Validator, validators={"pattern": _pattern}, type_checker=_TYPES)


def first_schema_error(schema: dict[str, Any], instance: Any) -> jsonschema.ValidationError | None:
    """The most relevant way `instance` breaks `schema`, if it does."""
    errors = _Validator(schema).iter_errors(instance)
    error: jsonschema.ValidationError | None = jsonschema.exceptions.best_match(errors)
    return error


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
        location = printable("/".join(str(part) for part in where)) or "(top level)"
        return UsageError(f"{self.path}:{self.line(where)}: {location}: {message}")

    def validate(self, schema: dict[str, Any], hints: dict[str, str] | None = None) -> None:
        """Raise the most relevant schema error; `hints` say in words what a `pattern` field wants."""
        error = first_schema_error(schema, self.data)
        if error is None:
            return
        where = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict) \
                and isinstance(error.schema, dict):
            where += sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)[:1]
        raise self.error(tuple(where), schema_message(error, str(where[0]) if where else "", hints))


def schema_message(error: jsonschema.ValidationError, field: str, hints: dict[str, str] | None = None) -> str:
    """The schema's message, or for a `pattern` what the field wants in words rather than a regex."""
    hint = (hints or {}).get(field) if error.validator == "pattern" else None
    return f"{error.instance!r} {hint}" if hint else error.message


def read_text(path: Path, what: str) -> str:
    """The file's text: at most MAX_BYTES of UTF-8, whatever the path is (a device is read no further)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {what} {path}: {getattr(error, 'strerror', None) or error}") from error
    if len(raw) > MAX_BYTES:
        raise UsageError(f"{path}: more than {MAX_BYTES // 1024} KiB, refused: {what} files are far smaller")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x})") from None


def read_yaml(path: Path, what: str) -> YamlFile:
    """Parse `path` safely; unreadable files, refused YAML and YAML syntax errors are one-line usage errors."""
    text = read_text(path, what)
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as refused:
        raise UsageError(f"{path}:{refused.line}: {refused.problem} in {what} files") from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        raise UsageError(f"{path}:{line}: not valid YAML: character #x{error.character:04x}: {error.reason}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UsageError(f"{where}: not valid YAML: {getattr(error, 'problem', None) or error}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return YamlFile(path, data, _node_lines(node) if node is not None else {})
