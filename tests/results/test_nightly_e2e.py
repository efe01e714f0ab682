"""Two real nights of one small matrix, the second regressing: what `lab compare` makes of them.

One cell, a short scenario (boot, hibernate): the first night its firmware offers SYSTEM_OFF2, the
second night the scenario file is changed to a PSCI personality without it, so the guest falls
back to plain SYSTEM_OFF and the cell fails. Both nights are indexed in the SQLite store beside the
runs as they finish; the same comparison is then made from a PostgreSQL store the runs are imported into.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.results.store import ResultsStore

LAB = [sys.executable, "-m", "lab.cli"]
PROBE = """name: nightly-probe
description: Hibernate once; the guest must power off with SYSTEM_OFF2.
psci: {psci}
steps:
  - boot: {{expect: fresh}}
  - hibernate: {{expect: hibernate-off2}}
"""
KNOWN = """known_issues:
  - id: probe-without-off2
    match: {scenario: nightly-probe, class: hibernate-off, reason: "hibernate-off"}
    link: https://bugs.example/off2
    advice: the firmware offers no SYSTEM_OFF2; expected until it does
"""


def lab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs directory after two nights of the probe matrix: kvm (passes), then none (regresses, and fails
    its retry too)."""
    root = tmp_path_factory.mktemp("nightly")
    scenario, matrix = root / "probe.yaml", root / "probe-matrix.yaml"
    matrix.write_text("name: probe\nkernels: [default]\nscenarios: [probe.yaml]\naccelerators: [tcg]\n")
    for psci, status in (("kvm", 0), ("none", 1)):
        scenario.write_text(PROBE.format(psci=psci))
        run = lab("run", "--matrix", str(matrix), "--runs-dir", str(root / "runs"), "--retries", "1")
        assert run.returncode == status, run.stdout + run.stderr
        assert "results store" not in run.stdout + run.stderr
    return root / "runs"


@pytest.mark.guest
def test_compare_finds_the_real_regression_on_sqlite_then_postgresql(two_nights: Path, postgres_server: str) -> None:
    compared = lab("compare", "--runs-dir", str(two_nights), "--json")
    assert compared.returncode == 1, compared.stderr
    report = json.loads(compared.stdout)
    [change] = report["changes"]
    assert (change["cell"], change["change"]) == ("nightly-probe[kernel=default,accel=tcg]", "regression")
    assert change["what"] == ["PASS→FAIL", "boot1 class hibernate-off2 → hibernate-off"]
    assert change["differed"] == {"PSCI personality": {"old": "kvm", "new": "none"}}

    with ResultsStore(f"sqlite:///{two_nights / 'results.sqlite'}") as store:
        [passed] = store.night(Path(report["old"]).name)
    assert 0 < passed.kernel_timings["hibernate_seconds"] < passed.hibernate_seconds, passed.kernel_timings
    assert passed.kernel_timings["image_kbytes"] > 0 and passed.classes == ["boot1:hibernate-off2"]

    imported = lab("results", "import", str(two_nights), "--db", postgres_server)
    assert imported.returncode == 0, imported.stderr
    again = lab("compare", "--runs-dir", str(two_nights), "--db", postgres_server, "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["changes"] == report["changes"]


@pytest.mark.guest
def test_a_cell_that_fails_its_retry_too_is_a_regression_not_flaky(two_nights: Path) -> None:
    first, second = sorted(path for path in two_nights.iterdir() if path.is_dir())
    assert [path.name for path in first.iterdir() if path.is_dir()] == ["nightly-probe.kernel=default.accel=tcg"]
    assert sorted(path.name for path in second.iterdir() if path.is_dir()) == [
        "nightly-probe.kernel=default.accel=tcg", "nightly-probe.kernel=default.accel=tcg.retry1"]
    [cell] = json.loads((second / "matrix.json").read_text())["cells"]
    assert cell["status"] == "FAIL"
    assert cell["retries"] == [str(second / "nightly-probe.kernel=default.accel=tcg.retry1")]
    flakes = lab("results", "flakes", "--runs-dir", str(two_nights))
    assert "nightly-probe[kernel=default,accel=tcg]: 0/2 (0%)" in flakes.stdout, flakes.stdout + flakes.stderr


@pytest.mark.guest
def test_a_known_issue_silences_the_real_regression(two_nights: Path, tmp_path: Path) -> None:
    known = tmp_path / "known.yaml"
    known.write_text(KNOWN)
    compared = lab("compare", "--runs-dir", str(two_nights), "--known", str(known))
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "[known: probe-without-off2]" in compared.stdout
    assert "the firmware offers no SYSTEM_OFF2" in compared.stdout
    assert "0 new regression(s)" in compared.stdout
