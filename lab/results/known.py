"""Known issues: failures already triaged, each with a link and a line of advice, labelled known not new.

A YAML file lists them; an entry matches a failing run when every field of its `match` does:
`scenario`, `cell`, `class` (any power-off's class) and `kernel` (the version) exactly; `reason`
(the verdict's reason) and `console` (any line of any boot's console log) as regular expressions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.paths import load_schema
from lab.results import KNOWN_ISSUES_FILE
from lab.results.record import RunRecord
from lab.rundir import RunDirectory
from lab.yaml_file import read_yaml

_SCHEMA = load_schema("known-issues")


@dataclass(frozen=True)
class KnownIssue:
    id: str
    exact: dict[str, str]
    reason: re.Pattern[str] | None
    console: re.Pattern[str] | None
    link: str
    advice: str

    def matches(self, record: RunRecord) -> bool:
        facts = {"scenario": {record.scenario}, "cell": {record.cell},
                 "class": {entry.partition(":")[2] for entry in record.classes},
                 "kernel": {record.kernel_version or "", record.kernel_release or ""}}
        if any(value not in facts[name] for name, value in self.exact.items()):
            return False
        if self.reason is not None and not self.reason.search(record.reason):
            return False
        return self.console is None or _console_has(Path(record.run_dir), self.console)

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "link": self.link, "advice": self.advice}


def _console_has(run_dir: Path, pattern: re.Pattern[str]) -> bool:
    return any(pattern.search(line) for boot in RunDirectory(run_dir).boots() for line in boot.read_console())


def known_issues_file(runs_root: Path) -> Path | None:
    """known-issues.yaml in the runs directory, if there is one: the lab's default known issues."""
    path = runs_root / KNOWN_ISSUES_FILE
    return path if path.exists() else None


def load_known_issues(path: Path | None) -> list[KnownIssue]:
    """The file's issues (none without a file); a bad file or pattern is a one-line usage error."""
    if path is None:
        return []
    file = read_yaml(path, "known issues")
    file.validate(_SCHEMA)
    issues = []
    for index, entry in enumerate(file.data["known_issues"]):
        match = entry["match"]
        patterns: dict[str, re.Pattern[str] | None] = {}
        for name in ("reason", "console"):
            try:
                patterns[name] = re.compile(match[name]) if name in match else None
            except re.error as error:
                raise file.error(("known_issues", index, "match", name), f"not a regular expression: {error}") \
                    from None
        exact = {name: value for name, value in match.items() if name not in patterns}
        issues.append(KnownIssue(entry["id"], exact, patterns["reason"], patterns["console"], entry["link"],
                                 entry["advice"]))
    return issues


def known_labels(records: list[RunRecord], runs_root: Path) -> dict[Path, str]:
    """`known issue ID: advice (link)` for each failing run a known issue (in the runs directory's
    known-issues.yaml) explains, by run directory: what reports show beside the failure."""
    issues = load_known_issues(known_issues_file(runs_root))
    return {Path(record.run_dir): f"known issue {issue.id}: {issue.advice} ({issue.link})"
            for record in records if (issue := known_issue(record, issues)) is not None}


def known_issue(record: RunRecord, issues: list[KnownIssue]) -> KnownIssue | None:
    """The first known issue a failing run matches; a passing run has none."""
    if record.status == "PASS":
        return None
    return next((issue for issue in issues if issue.matches(record)), None)
