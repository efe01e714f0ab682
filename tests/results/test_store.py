"""The results store, `lab compare`, known issues, flakes and regression records on generated nights.

Each test runs on a SQLite file and on a real PostgreSQL (tests/results/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from lab.cli import main
from lab.results.record import read_directory
from lab.results.store import ResultsStore, index_quietly
from tests.support.results_history import FIRST_NIGHT, Cell, write_night, write_single_run

GOOD = Cell("hibernate-resume[kernel=default]")
OTHER = Cell("no-stale-resume[kernel=default]")
BROKE = Cell("hibernate-resume[kernel=default]", "FAIL", "hibernate-off", kernel="7.2.14-1",
             console="psci: SYSTEM_OFF2 not supported, falling back")


def lab(*argv: str) -> int:
    return main(list(argv))


def _nights(root: Path, *nights: list[Cell]) -> list[Path]:
    return [write_night(root, "nightly", number, cells) for number, cells in enumerate(nights)]


def test_compare_finds_the_regression_and_what_changed(store_url: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _nights(tmp_path, [GOOD, OTHER], [BROKE, OTHER])
    assert lab("results", "import", str(tmp_path), "--db", store_url) == 0
    capsys.readouterr()
    assert lab("compare", "--db", store_url, "--runs-dir", str(tmp_path), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    [change] = report["changes"]
    assert change["cell"] == GOOD.id and change["change"] == "regression" and change["known"] is None
    assert change["what"] == ["PASS→FAIL", "boot1 class hibernate-off2 → hibernate-off"]
    assert change["differed"] == {"kernel": {"old": "7.2.13-1", "new": "7.2.14-1"}}
    assert lab("compare", "--db", store_url, "--runs-dir", str(tmp_path)) == 1
    text = capsys.readouterr().out
    assert "regressions (1):" in text and "kernel 7.2.13-1 → 7.2.14-1" in text


def test_a_known_issue_silences_the_regression(store_url: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    old, new = _nights(tmp_path / "runs", [GOOD], [BROKE])
    known = tmp_path / "known.yaml"
    known.write_text("known_issues:\n  - id: off2-fallback\n    match: {class: hibernate-off, console: 'SYSTEM_OFF2 "
                     "not supported'}\n    link: https://bugs.example/1\n    advice: kernel lacks SYSTEM_OFF2\n")
    assert lab("compare", str(old), str(new), "--db", store_url, "--known", str(known)) == 0
    out = capsys.readouterr().out
    assert "[known: off2-fallback]" in out and "0 new regression(s)" in out


def test_a_flaky_cell_is_flaky_not_a_regression(store_url: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    flaky = Cell(GOOD.id, flaky=True)
    _nights(tmp_path, [GOOD], [flaky], [GOOD])
    assert lab("results", "import", str(tmp_path), "--db", store_url) == 0
    with ResultsStore(store_url) as store:
        nights = [night for _, night in store.nights()]
    capsys.readouterr()
    assert lab("compare", nights[0], nights[1], "--db", store_url, "--json") == 0
    [change] = json.loads(capsys.readouterr().out)["changes"]
    assert change["change"] == "flaky"
    assert lab("results", "flakes", "--db", store_url) == 0
    assert f"{GOOD.id}: 1/3 (33%)" in capsys.readouterr().out


def test_regression_records_first_failing_last_passing_active(store_url: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    broken_other = Cell(OTHER.id, "FAIL", "poweroff")
    directories = _nights(tmp_path, [GOOD, OTHER], [BROKE, OTHER], [BROKE, broken_other], [GOOD, broken_other])
    assert lab("results", "import", str(tmp_path), "--db", store_url) == 0
    capsys.readouterr()
    assert lab("regressions", "--db", store_url, "--json") == 0
    records = {record["cell"]: record for record in json.loads(capsys.readouterr().out)}
    assert records[GOOD.id]["active"] is False
    assert records[GOOD.id]["first_failing_night"] == directories[1].name
    assert records[GOOD.id]["last_passing_night"] == directories[0].name
    assert records[GOOD.id]["fixed_by"] == str((directories[3] / "cell0").resolve())
    assert records[OTHER.id]["active"] is True and records[OTHER.id]["nights_failing"] == 2


def test_import_is_idempotent_and_a_half_imported_batch_rolls_back(store_url: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    _nights(runs, [GOOD, OTHER])
    assert lab("results", "import", str(runs), "--db", store_url) == 0
    assert lab("results", "import", str(runs), "--db", store_url) == 0
    with ResultsStore(store_url) as store:
        assert store.count() == 2
    second = write_night(runs, "nightly", 1, [GOOD, OTHER])
    (second / "cell1" / "result.json").unlink()
    (second / "cell1" / "scenario.json").write_text("{}")
    capsys.readouterr()
    assert lab("results", "import", str(runs), "--db", store_url) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no readable result.json" in err
    with ResultsStore(store_url) as store:
        assert store.count() == 2
    assert len(read_directory(runs / second.name / "cell0")) == 1


def test_two_nights_of_different_matrices_are_refused(store_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    one = write_night(tmp_path, "nightly", 0, [GOOD])
    other = write_night(tmp_path, "weekly", 1, [GOOD])
    assert lab("compare", str(one), str(other), "--db", store_url) == 2
    assert "different matrices" in capsys.readouterr().err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_corrupt_or_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    _nights(runs, [GOOD])
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all\n" * 100)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as connection:
        connection.execute("create table invoices (id integer)")
    connection.close()
    for database, words in ((corrupt, "file is not a database"), (foreign, "not a lab results store")):
        before = _digest(database)
        assert lab("results", "import", str(runs), "--db", f"sqlite:///{database}") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
        assert _digest(database) == before


def test_a_store_from_a_newer_lab_is_refused(store_url: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with ResultsStore(store_url, create=True) as store, store._connection() as connection:
        connection.exec_driver_sql("UPDATE lab_results_meta SET value = '99' WHERE key = 'schema_version'")
    _nights(tmp_path, [GOOD])
    assert lab("results", "import", str(tmp_path), "--db", store_url) == 2
    assert "schema version 99, newer than this lab's" in capsys.readouterr().err


def test_bad_directories_and_unreachable_databases_are_one_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "events.jsonl").write_text("")
    (unfinished / "scenario.json").write_text("{}")
    database = f"sqlite:///{tmp_path / 'results.sqlite'}"
    for argv, words in (
        (["results", "import", str(empty), "--db", database], "holds no run or matrix directory"),
        (["results", "import", str(unfinished), "--db", database], "has no readable result.json"),
        (["results", "import", str(tmp_path / "missing"), "--db", database], "is not a directory"),
        (["compare", "--db", "postgresql+psycopg://lab:secret@127.0.0.1:9/lab"], "Connection refused"),
        (["compare", "--db", "nosuch://x"], "not a database URL"),
        (["compare", "--db", database], "no results store at"),
    ):
        assert lab(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "secret" not in err, err
    assert not (tmp_path / "results.sqlite").exists()


def test_a_finished_run_is_indexed_and_its_known_failures_named_or_the_store_s_trouble_is_one_line(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    night = write_night(runs, "nightly", 0, [BROKE])
    (runs / "known-issues.yaml").write_text("known_issues:\n  - id: off2-fallback\n    match: {class: hibernate-off}\n"
                                            "    link: https://bugs.example/1\n    advice: kernel lacks SYSTEM_OFF2\n")
    assert index_quietly(night, runs) == [f"{BROKE.id}: FAIL is known issue off2-fallback (https://bugs.example/1): "
                                          "kernel lacks SYSTEM_OFF2"]
    with ResultsStore(f"sqlite:///{runs / 'results.sqlite'}") as store:
        assert store.count() == 1
    (runs / "results.sqlite").write_bytes(b"garbage" * 1000)
    [line] = index_quietly(night, runs)
    assert line.startswith(f"results store: {night} not indexed: ") and "file is not a database" in line


def test_reading_commands_refuse_an_empty_store_and_say_how_to_fill_it(store_url: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    if store_url.startswith("sqlite"):
        with ResultsStore(store_url, create=True):
            pass
        assert lab("regressions", "--db", store_url) == 2
        assert "holds no runs: `lab results import RUNS_DIR` first" in capsys.readouterr().err
    else:
        assert lab("regressions", "--db", store_url) == 2
        assert "is empty: `lab results import RUNS_DIR` fills it" in capsys.readouterr().err


def test_single_runs_are_listed_with_ids_that_compare_takes(store_url: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    recorded = Path(__file__).parent.parent / "report" / "data" / "run-no-stale-resume"
    runs = tmp_path / "runs"
    for stamp, kind in (("20261201T020000", "hibernate-off2"), ("20261202T020000", "hibernate-off")):
        run = runs / f"{stamp}-no-stale-resume"
        shutil.copytree(recorded, run)
        result = json.loads((run / "result.json").read_text())
        result["verdict"]["power_offs"][0]["class"] = kind
        result["verdict"]["status"] = "PASS" if kind == "hibernate-off2" else "FAIL"
        (run / "result.json").write_text(json.dumps(result))
    write_night(runs, "nightly", 0, [GOOD])
    assert lab("results", "import", str(runs), "--db", store_url) == 0
    capsys.readouterr()
    assert lab("results", "list", "--db", store_url) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[1:] for row in listed] == [["nightly-20261101T020000", "nightly", "1", "PASS"],
                                           ["1", "no-stale-resume", "1", "PASS"],
                                           ["2", "no-stale-resume", "1", "FAIL"]]
    assert lab("compare", "1", "2", "--db", store_url) == 1
    assert "boot1 class hibernate-off2 → hibernate-off" in capsys.readouterr().out
    assert lab("compare", "2", "--db", store_url) == 1
    assert lab("compare", "nightly-20261101T020000", "2", "--db", store_url) == 2
    assert "different matrices" in capsys.readouterr().err


def test_runs_outside_a_matrix_are_nights_by_day_as_the_nightly_service_makes_them(
        store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    day = FIRST_NIGHT.replace(hour=2)
    for offset, first in ((0, Cell("hibernate-resume")), (1, Cell("hibernate-resume", "FAIL", "hibernate-off",
                                                                 kernel="7.2.14-1"))):
        write_single_run(runs, day + timedelta(days=offset), first)
        write_single_run(runs, day + timedelta(days=offset, minutes=1), Cell("no-stale-resume"))
    write_single_run(runs, day + timedelta(days=1, minutes=2), Cell("no-stale-resume", "FAIL", "crash"))
    write_single_run(runs, day + timedelta(days=1, minutes=3), Cell("no-stale-resume"))
    assert lab("results", "import", str(runs), "--db", store_url) == 0
    capsys.readouterr()
    assert lab("compare", "--db", store_url, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["old"], report["new"]) == ("single-runs-2026-11-01", "single-runs-2026-11-02")
    assert {change["cell"]: change["change"] for change in report["changes"]} == {
        "hibernate-resume": "regression", "no-stale-resume": "flaky"}
    assert lab("regressions", "--db", store_url) == 0
    assert "single-runs: 1 regression(s), 1 active" in capsys.readouterr().out
    assert lab("compare", "single-runs-2026-11-01", "single-runs-2026-11-02", "--db", store_url) == 1
    assert lab("dashboard", "--db", store_url, "--out", str(tmp_path / "board.html")) == 0
    assert "single-runs: 2 nights, 2 cells" in (tmp_path / "board.html").read_text()


def test_the_kernel_s_own_timings_are_read_from_its_console() -> None:
    recorded = Path(__file__).parent.parent / "report" / "data" / "run-no-stale-resume"
    [record] = read_directory(recorded)
    assert record.kernel_timings == {"hibernate_seconds": 14.734, "image_kbytes": 75208.0,
                                     "image_write_seconds": 10.76, "restore_seconds": 14.493}
    assert (record.hibernate_seconds, record.resume_seconds) == (19.231, 33.912)
