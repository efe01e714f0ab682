"""`lab triage RUN_DIR`: re-run a failed scenario's hibernation at each pm_test level and in test_resume mode.

As Documentation/power/basic-pm-debugging.rst has a kernel developer do by hand: per pm_test level
(freezer, devices, platform, processors, core), the failed run's steps up to its first hibernation,
then one hibernation at that level, announced on the kernel log (the lab powers the guest off once
a hibernation returns, so each level gets a boot of its own, all in one run); then, in a second
run, one hibernation in the `test_resume` disk mode, which writes the image and restores it at
once without a reboot (firmware and boot loader play no part). The first failing level and the
test_resume result are printed and written to `triage.json` beside the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.errors import UsageError
from lab.events import Listener
from lab.judge.catalogue import catalogue
from lab.judge.ladder import MARKER, LevelResult, first_failing, judge_level, level_segments, summary_line
from lab.rundir import RunDirectory, write_json
from lab.scenario.model import load_scenario
from lab.scenario.pm_knobs import PM_TEST_LEVELS
from lab.scenario.run import RunOptions, run_scenario

TEST_RESUME = "test_resume"
_REPLACED = ("name", "description", "steps", "pm_test")
"""What a triage scenario sets itself; it keeps every other field of the failed run's scenario."""


@dataclass(frozen=True)
class Triage:
    levels: list[LevelResult]
    test_resume: LevelResult
    summary: str
    path: Path


def _failed_run(run_dir: RunDirectory) -> tuple[dict[str, Any], dict[str, Any]]:
    result, source = run_dir.read_result(), run_dir.read_scenario()
    if result is None or source is None:
        raise UsageError(f"{run_dir.path} is not a run directory (no result.json and scenario.json)")
    if result["verdict"]["status"] == "PASS":
        raise UsageError(f"{run_dir.path} passed: there is nothing to triage")
    return result, source


def _hibernates(step: Any) -> bool:
    """Whether a step (as the scenario file writes it) is a hibernation or a repeat holding one."""
    kind = step if isinstance(step, str) else next(iter(step))
    return kind == "hibernate" or (kind == "repeat" and any(_hibernates(inner) for inner in step[kind]["steps"]))


def _prefix(source: dict[str, Any]) -> list[Any]:
    """The scenario's top-level steps before its first hibernation (which may sit inside a repeat)."""
    steps = source["steps"]
    first = next((index for index, step in enumerate(steps) if _hibernates(step)), None)
    if first is None:
        raise UsageError(f"scenario {source['name']} never hibernates: there is nothing to triage")
    return list(steps[:first])


def _attempt(prefix: list[Any], name: str, hibernate: dict[str, Any]) -> list[Any]:
    """The scenario's steps up to its first hibernation (a copy: YAML would alias a repeated object),
    then this hibernation, announced on the kernel log."""
    marker = {"run": {"command": f"echo '{MARKER} {name}' > /dev/kmsg"}}
    return [*json.loads(json.dumps(prefix)), marker, {"hibernate": hibernate}]


def _scenario_file(folder: Path, source: dict[str, Any], suffix: str, attempts: list[Any]) -> Path:
    data = {key: value for key, value in source.items() if key not in _REPLACED}
    data |= {"name": f"{source['name']}-{suffix}"[:64].rstrip("-"),
             "description": f"Triage of {source['name']}: {suffix}.", "steps": attempts}
    path = folder / f"{suffix}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _options(result: dict[str, Any], run_dir: RunDirectory, folder: Path, user_catalogue: Path | None) -> RunOptions:
    """The failed run's guest again: its image, kernel, accelerator and QEMU build."""
    environment = result.get("environment") or {}
    image = environment.get("image") or {}
    machine = run_dir.boot("boot1").read_machine() or {}
    return RunOptions(arch=machine.get("arch", "arm64"), image=image.get("name"), kernel_deb=image.get("kernel_pin"),
                      accel=environment.get("accel"), qemu=(environment.get("qemu_build") or {}).get("name"),
                      runs_root=folder, catalogue=user_catalogue)


def _judged(run: Path, names: list[str], user_catalogue: Path | None) -> list[LevelResult]:
    ran = RunDirectory(run)
    checks = (ran.read_result() or {}).get("verdict", {}).get("checks", [])
    entries = catalogue(user_catalogue)
    results = []
    for name in names:
        trial = f"pm_test={name}" if name != TEST_RESUME else TEST_RESUME
        check = next((c for c in checks if c["name"].endswith(f" {trial}")), None)
        boot = check["name"].split()[0] if check else "boot1"
        lines = level_segments(ran.boot(boot).read_console()).get(name)
        results.append(judge_level(name, check, lines, entries, boot))
    return results


def triage(run_path: Path, listeners: list[Listener], user_catalogue: Path | None = None,
           levels: tuple[str, ...] = PM_TEST_LEVELS) -> Triage:
    """Walk the ladder and try test_resume for the failed run at `run_path`; writes triage.json beside it."""
    started = time.monotonic()
    catalogue(user_catalogue)
    run_dir = RunDirectory(run_path)
    result, source = _failed_run(run_dir)
    folder = run_path / "triage"
    folder.mkdir(exist_ok=True)
    options = _options(result, run_dir, folder, user_catalogue)
    prefix = _prefix(source)
    ladder_file = _scenario_file(folder, source, "pm-test-ladder",
                                 [step for level in levels for step in _attempt(prefix, level, {"pm_test": level})])
    ladder = run_scenario(load_scenario(ladder_file), options, listeners)
    resume_file = _scenario_file(folder, source, "test-resume",
                                 _attempt(prefix, TEST_RESUME, {"mode": TEST_RESUME}))
    resumed = run_scenario(load_scenario(resume_file), options, listeners)
    results = _judged(ladder.run_dir, list(levels), user_catalogue)
    (test_resume,) = _judged(resumed.run_dir, [TEST_RESUME], user_catalogue)
    failing = first_failing(results)
    summary = summary_line(results)
    path = run_path / "triage.json"
    write_json(path, {
        "run": str(run_path), "scenario": source["name"], "summary": summary,
        "first_failing": failing.level if failing else None,
        "levels": [r.to_json() for r in results], "test_resume": test_resume.to_json(),
        "runs": {"pm_test_ladder": str(ladder.run_dir), TEST_RESUME: str(resumed.run_dir)},
        "catalogue": str(user_catalogue) if user_catalogue else None,
        "seconds": round(time.monotonic() - started, 3),
    })
    return Triage(results, test_resume, summary, path)
