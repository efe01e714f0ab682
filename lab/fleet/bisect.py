"""`lab bisect`: which of the Debian kernel versions the archive serves broke a scenario, or fixed it.

The versions between GOOD and BAD are ordered by Debian's rules (python-debian) and searched by
halves, each tested by a real run of the scenario with that kernel. The endpoints are tested first:
GOOD must pass and BAD must fail. A result that differs from the run before it (a flip) is run
again before it is trusted; if the two runs disagree the bisection stops, since its answer would
be a guess. An ERROR (the lab's or its infrastructure's failure) stops it too: it says nothing
about the kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from debian.debian_support import Version

from lab.errors import LabError, UsageError
from lab.image.recipe import ImageRecipe
from lab.image.store import ImageStore
from lab.results.record import Status
from lab.results.store import index_quietly
from lab.scenario.model import Scenario
from lab.scenario.run import RunOptions, image_for, run_scenario


class BisectStopped(LabError):
    """The bisection cannot give a trustworthy answer: an endpoint is not what it was said to be, a result
    flips between runs, or a run ended in ERROR."""

    exit_code = 1


@dataclass(frozen=True)
class Tested:
    version: str
    status: Status
    run_dir: Path
    reason: str


@dataclass(frozen=True)
class BisectResult:
    """The first version on BAD's side of the change and the last on GOOD's, each with its run."""

    good: Tested
    bad: Tested
    runs: int

    @property
    def describe(self) -> str:
        older, newer = sorted((self.good, self.bad), key=lambda tested: Version(tested.version))
        verb = "broke it" if newer is self.bad else "fixed it"
        return (f"{newer.version} {verb}: {older.version} {older.status}, {newer.version} {newer.status} "
                f"({self.runs} runs)\n  {older.version}: {older.run_dir}\n  {newer.version}: {newer.run_dir}")


def served_versions(recipe: ImageRecipe, package: str) -> list[str]:
    """The package's versions in the lab's Debian suites, oldest first by Debian's ordering."""
    return sorted(ImageStore().apt_for(recipe).versions(package, recipe.arch), key=Version)


def between(versions: list[str], good: str, bad: str) -> list[str]:
    """The versions from GOOD to BAD inclusive, in that direction; unknown ones are a usage error."""
    for name, version in (("--good", good), ("--bad", bad)):
        if version not in versions:
            raise UsageError(f"{name} {version}: not a version the archive serves ({', '.join(versions)})")
    if good == bad:
        raise UsageError("--good and --bad are the same version")
    first, last = sorted((versions.index(good), versions.index(bad)))
    span = versions[first:last + 1]
    return span if span[0] == good else span[::-1]


class Bisection:
    """Runs of one scenario on kernels by version; `say` shows each as it ends."""

    def __init__(self, scenario: Scenario, options: RunOptions, package: str, say: Callable[[str], None]) -> None:
        self.scenario, self.options, self.package, self.say = scenario, options, package, say
        self.runs = 0
        self.last: Status | None = None

    def _once(self, version: str) -> Tested:
        options = replace(self.options, kernel_deb=f"{self.package}={version}")
        image_for(self.scenario, options, log=lambda line: self.say(f"  {line}"))
        result = run_scenario(self.scenario, options, [])
        for line in index_quietly(result.run_dir, options.runs_root):
            self.say(f"  {line}")
        self.runs += 1
        tested = Tested(version, Status(result.verdict.status), result.run_dir, result.verdict.reason)
        self.say(f"{version}: {tested.status} {tested.reason} [{tested.run_dir}]")
        if tested.status == Status.ERROR:
            raise BisectStopped(f"{version} ended in ERROR, which says nothing about the kernel: {tested.reason}")
        return tested

    def test(self, version: str) -> Tested:
        """One run; a result unlike the one before it is run again, and must agree with itself."""
        tested = self._once(version)
        if self.last is not None and tested.status != self.last:
            again = self._once(version)
            if again.status != tested.status:
                raise BisectStopped(f"{version} flips between runs ({tested.status} in {tested.run_dir}, "
                                    f"{again.status} in {again.run_dir}): bisecting it would be a guess")
        self.last = tested.status
        return tested


def bisect(bisection: Bisection, span: list[str]) -> BisectResult:
    """Search `span` (GOOD first, BAD last) for where PASS turns into FAIL."""
    good, bad = bisection.test(span[0]), bisection.test(span[-1])
    if good.status != Status.PASS or bad.status != Status.FAIL:
        raise BisectStopped(f"expected {good.version} to PASS and {bad.version} to FAIL, got {good.status} and "
                            f"{bad.status}: nothing to bisect")
    low, high = 0, len(span) - 1
    while high - low > 1:
        middle = (low + high) // 2
        tested = bisection.test(span[middle])
        if tested.status == Status.PASS:
            low, good = middle, tested
        else:
            high, bad = middle, tested
    return BisectResult(good, bad, bisection.runs)
