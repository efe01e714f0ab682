"""The kernel log catalogue: known kernel lines, each with a label, a severity and one line of advice.

Like fwts's klog.json: the lab ships `data/catalogue.yaml`, a user adds their own file with
`--catalogue FILE`, and every boot's kernel lines are matched against both. A match is a finding in
the verdict; the most severe finding leads a failed run's reason. Entries are data: adding one
needs no code. Only timestamped kernel lines are matched, so the lab's own commands echoed on the
serial console (which may quote any text) never count as the kernel's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from lab.paths import load_schema
from lab.vocabulary import KERNEL_TIMESTAMP
from lab.yaml_file import read_yaml

SHIPPED = Path(__file__).parent / "data" / "catalogue.yaml"
_SCHEMA = load_schema("catalogue")


class Severity(IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Entry:
    label: str
    pattern: re.Pattern[str]
    severity: Severity
    advice: str
    source: str
    """The catalogue file and line the entry comes from."""
    resuming_only: bool = False
    """Only boots expected to resume: with pm_debug_messages every fresh boot with `resume=` logs "Image not found"."""


@dataclass(frozen=True)
class Finding:
    """A catalogue entry that matched a boot's console: the first line it matched, and how many did."""

    boot: str
    label: str
    severity: Severity
    advice: str
    line: str
    count: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"severity": str(self.severity)}

    def headline(self) -> str:
        return f"{self.boot}: {self.label} [{self.severity}]: {self.line!r}"


def load_catalogue(path: Path) -> list[Entry]:
    """The entries of one catalogue file; a file that does not validate is a one-line usage error."""
    file = read_yaml(path, "catalogue")
    file.validate(_SCHEMA)
    entries = []
    for index, item in enumerate(file.data["entries"]):
        where = ("entries", index, "pattern")
        try:
            pattern = re.compile(item["pattern"])
        except re.error as error:
            raise file.error(where, f"not a regular expression: {error}") from None
        entries.append(Entry(item["label"], pattern, Severity[item["severity"].upper()], item["advice"],
                             f"{path.name}:{file.line(where)}", resuming_only=item.get("boots") == "resuming"))
    return entries


def catalogue(extra: Path | None = None) -> list[Entry]:
    """The shipped entries, then the user's."""
    return load_catalogue(SHIPPED) + (load_catalogue(extra) if extra is not None else [])


def match_boot(boot: str, lines: list[str], entries: list[Entry], resuming: bool = True) -> list[Finding]:
    """Each entry that matches one of the boot's kernel lines, once, with its first line and its count;
    entries for resuming boots only are skipped when the boot was not expected to resume."""
    kernel_lines = [line[stamp.start():].strip() for line in lines if (stamp := KERNEL_TIMESTAMP.search(line))]
    findings = []
    for entry in entries:
        if entry.resuming_only and not resuming:
            continue
        hits = [line for line in kernel_lines if entry.pattern.search(line)]
        if hits:
            findings.append(Finding(boot, entry.label, entry.severity, entry.advice, hits[0], len(hits),
                                    entry.source))
    return findings


def match_consoles(consoles: dict[str, list[str]], entries: list[Entry],
                   resuming: set[str] | None = None) -> list[Finding]:
    """Every boot's findings, most severe first (then in boot order); `resuming` names the boots expected to
    resume (None: not known, every entry applies to every boot)."""
    findings = [finding for boot, lines in consoles.items()
                for finding in match_boot(boot, lines, entries, resuming is None or boot in resuming)]
    return sorted(findings, key=lambda finding: -finding.severity)
