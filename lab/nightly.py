"""The nightly commands: `lab results`, `lab compare`, `lab regressions`, `lab dashboard` and `lab bisect`.

They read the results store (lab.results) and run directories; `lab bisect` alone runs guests.
Registered on the `lab` command by `add_commands`; each imports the store (SQLAlchemy) only when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lab.errors import UsageError
from lab.results import DATABASE_FILE, KNOWN_ISSUES_FILE

if TYPE_CHECKING:
    from lab.results.compare import Comparison
    from lab.results.known import KnownIssue
    from lab.results.record import RunRecord
    from lab.results.store import ResultsStore


def _store(args: argparse.Namespace, create: bool = False) -> ResultsStore:
    from lab.results.store import ResultsStore, default_url

    return ResultsStore(args.db or default_url(Path(args.runs_dir)), create)


def _known(args: argparse.Namespace) -> list[KnownIssue]:
    """The --known file, else known-issues.yaml beside the runs if there is one."""
    from lab.results.known import known_issues_file, load_known_issues

    if args.known:
        return load_known_issues(Path(args.known))
    return load_known_issues(known_issues_file(Path(args.runs_dir)))


def _results_import(args: argparse.Namespace) -> int:
    from lab.results.record import read_directory

    records = [record for directory in args.directories for record in read_directory(Path(directory))]
    with _store(args, create=True) as store:
        count = store.put(records)
        print(f"indexed {count} run(s) from {len(args.directories)} director(ies); the store holds {store.count()}")
    return 0


def _results_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows = store.listing()
    for key, what, counts, started in rows:
        print(f"{started}  {key:<40} {what:<30} {counts}")
    return 0


def _results_flakes(args: argparse.Namespace) -> int:
    from lab.results.history import flake_rates

    with _store(args) as store:
        matrix = args.matrix or _latest_matrix(store)
        rates = flake_rates(_history(store, matrix))
    print(f"{matrix}: flake rate per cell (nights with a failure that passed on retry)")
    for rate in rates:
        print(f"  {rate.cell}: {rate.flaky}/{rate.nights} ({rate.rate:.0%})")
    return 0


def _latest_matrix(store: ResultsStore) -> str:
    """The matrix run last; runs outside any matrix count as the matrix SINGLE_RUNS, a night per day."""
    from lab.results.history import SINGLE_RUNS

    nights, singles = store.nights(), store.single_runs()
    if not nights and not singles:
        raise UsageError(f"the results store {store.url} holds no runs: `lab results import RUNS_DIR` first")
    if not nights or (singles and singles[-1].started > store.night(nights[-1][1])[0].started):
        return SINGLE_RUNS
    return nights[-1][0]


def _history(store: ResultsStore, matrix: str) -> list[RunRecord]:
    from lab.results.history import SINGLE_RUNS, as_nights

    return as_nights(store.single_runs()) if matrix == SINGLE_RUNS else store.history(matrix)


def _last_night(store: ResultsStore, matrix: str, before: str | None = None) -> tuple[str, list[RunRecord]]:
    """The last night of `matrix`, or the last before the night `before`."""
    from lab.results.history import nights_of

    nights = nights_of(_history(store, matrix))
    if before is not None:
        nights = nights[: next((index for index, (name, _) in enumerate(nights) if name == before), len(nights))]
    if not nights:
        raise UsageError(f"the results store {store.url} holds no night of {matrix} before {before or 'now'}")
    return nights[-1]


def _side(store: ResultsStore, key: str) -> tuple[str, list[RunRecord]]:
    """A matrix or run directory, a night's name, or a run's id in the store."""
    from lab.results.history import SINGLE_RUNS, nights_of
    from lab.results.record import read_directory

    if Path(key).is_dir():
        return Path(key).name, read_directory(Path(key))
    if records := store.night(key):
        return key, records
    single_night = dict(nights_of(_history(store, SINGLE_RUNS))) if key.startswith(f"{SINGLE_RUNS}-") else {}
    if key in single_night:
        return key, single_night[key]
    if (record := store.run(key)) is not None:
        return f"run {key} ({Path(record.run_dir).name})", [record]
    raise UsageError(f"{key!r} is neither a directory nor a night or run id in the results store {store.url}")


def _previous(store: ResultsStore, name: str, records: list[RunRecord]) -> tuple[str, list[RunRecord]]:
    """The night (or run of the same scenario) before `records`."""
    matrix = records[0].matrix
    if matrix is not None:
        return _last_night(store, matrix, before=records[0].night)
    runs = [run for run in store.single_runs(records[0].scenario) if run.started < records[0].started]
    if runs:
        return f"run {Path(runs[-1].run_dir).name}", [runs[-1]]
    raise UsageError(f"the results store {store.url} holds nothing earlier than {name} to compare it with")


def _comparison(args: argparse.Namespace) -> Comparison:
    from lab.results.compare import compare
    from lab.results.record import read_directory

    if args.new and Path(args.old).is_dir() and Path(args.new).is_dir():
        old, new = read_directory(Path(args.old)), read_directory(Path(args.new))
        return compare(Path(args.old).name, old, Path(args.new).name, new, _known(args))
    with _store(args) as store:
        if args.new:
            old_name, old = _side(store, args.old)
            new_name, new = _side(store, args.new)
        else:
            new_name, new = _side(store, args.old) if args.old else _latest(store)
            old_name, old = _previous(store, new_name, new)
    return compare(old_name, old, new_name, new, _known(args))


def _latest(store: ResultsStore) -> tuple[str, list[RunRecord]]:
    return _last_night(store, _latest_matrix(store))


def _compare(args: argparse.Namespace) -> int:
    from lab.results.compare import render

    result = _comparison(args)
    print(json.dumps(result.to_json(), indent=2) if args.json else "\n".join(render(result)))
    return 1 if result.regressed else 0


def _regressions(args: argparse.Namespace) -> int:
    from lab.results.history import regression_records

    with _store(args) as store:
        matrix = args.matrix or _latest_matrix(store)
        records = regression_records(_history(store, matrix), _known(args))
    if args.json:
        print(json.dumps([record.to_json() for record in records], indent=2))
        return 0
    print(f"{matrix}: {len(records)} regression(s), {sum(r.active for r in records)} active")
    for record in records:
        state = "ACTIVE" if record.active else f"fixed in {record.fixed_by.night if record.fixed_by else ''}"
        known = f" [known: {record.known.id}]" if record.known else ""
        print(f"  {state} {record.cell}: {'; '.join(record.what)}{known}")
        print(f"    first failing {record.first_failing.night}: {record.first_failing.run_dir}")
        print(f"    last passing  {record.last_passing.night}: {record.last_passing.run_dir}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from lab.results.dashboard import build_dashboard, write_dashboard

    out = Path(args.out) if args.out else Path(args.runs_dir) / "dashboard.html"
    with _store(args) as store:
        matrix = args.matrix or _latest_matrix(store)
        history = _history(store, matrix)
    if not history:
        raise UsageError(f"the results store holds no runs of matrix {matrix!r}")
    try:
        write_dashboard(build_dashboard(matrix, history, _known(args), out, args.nights), out)
    except OSError as error:
        raise UsageError(f"cannot write {out}: {error.strerror}") from None
    print(out)
    return 0


def _bisect(args: argparse.Namespace) -> int:
    from lab.fleet.bisect import Bisection, between, bisect, served_versions
    from lab.fleet.matrix import image_name
    from lab.image.recipe import ImageRecipe
    from lab.scenario.model import find_scenario
    from lab.scenario.run import RunOptions

    scenario = find_scenario(args.scenario)
    recipe = ImageRecipe.named(image_name(scenario, args.arch))
    package = args.package or recipe.kernel_package
    span = between(served_versions(recipe, package), args.good, args.bad)
    print(f"bisecting {scenario.name} over {len(span)} {package} versions: {' '.join(span)}", flush=True)
    options = RunOptions(arch=args.arch, accel=args.accel, psci=args.psci, runs_root=Path(args.runs_dir))
    result = bisect(Bisection(scenario, options, package, lambda line: print(line, flush=True)), span)
    print(result.describe)
    return 0


def _positive(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"wants a whole number from 1, got {value!r}")
    return int(value)


def _store_options(command: argparse.ArgumentParser, known: bool = False) -> None:
    command.add_argument("--runs-dir", default="runs", help=f"where the runs are; the store is {DATABASE_FILE} "
                         "there unless --db or LAB_RESULTS_DB names another (default: ./runs)")
    command.add_argument("--db", metavar="URL", help="the results store: sqlite:///FILE or "
                         "postgresql+psycopg://USER@HOST/DB (default: LAB_RESULTS_DB, else beside the runs)")
    if known:
        command.add_argument("--known", metavar="FILE", help=f"known issues (YAML; default: {KNOWN_ISSUES_FILE} "
                             "in the runs directory, if there is one)")


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    results = commands.add_parser("results", help="the results store: index run and matrix directories")
    results_sub = results.add_subparsers(dest="results_command", required=True)
    load = results_sub.add_parser("import", help="index run, matrix or runs directories (the truth) in the store; "
                                                 "all or nothing")
    load.add_argument("directories", nargs="+", metavar="DIR")
    _store_options(load)
    load.set_defaults(handler=_results_import)
    listing = results_sub.add_parser("list", help="the nights and single runs in the store, with the ids "
                                                  "`lab compare` takes")
    _store_options(listing)
    listing.set_defaults(handler=_results_list)
    flakes = results_sub.add_parser("flakes", help="each cell's flake rate over a matrix's history")
    flakes.add_argument("--matrix", help="the matrix's name (default: the last one run)")
    _store_options(flakes)
    flakes.set_defaults(handler=_results_flakes)

    diff = commands.add_parser("compare", help="what regressed, was fixed, still fails between two nights; "
                                               "exit 1 on a regression")
    diff.add_argument("old", nargs="?", help="matrix or run directory, night name or run id (default: the night "
                                             "before NEW)")
    diff.add_argument("new", nargs="?", help="the same (default: the last night of the last matrix run)")
    diff.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _store_options(diff, known=True)
    diff.set_defaults(handler=_compare)

    regressions = commands.add_parser("regressions", help="regressions as records: first failing, last passing, "
                                                          "still active")
    regressions.add_argument("--matrix", help="the matrix's name (default: the last one run)")
    regressions.add_argument("--json", action="store_true")
    _store_options(regressions, known=True)
    regressions.set_defaults(handler=_regressions)

    board = commands.add_parser("dashboard", help="one static page: regressions, known issues, cells by nights, "
                                                  "hibernate and resume times")
    board.add_argument("--matrix", help="the matrix's name (default: the last one run)")
    board.add_argument("--nights", type=_positive, default=30, metavar="N", help="the last N nights (default: 30)")
    board.add_argument("--out", metavar="FILE", help="the page (default: dashboard.html in the runs directory)")
    _store_options(board, known=True)
    board.set_defaults(handler=_dashboard)

    search = commands.add_parser("bisect", help="which served Debian kernel version broke (or fixed) a scenario")
    search.add_argument("scenario", help="scenario name or file")
    search.add_argument("--good", required=True, metavar="VERSION", help="a version where the scenario passes")
    search.add_argument("--bad", required=True, metavar="VERSION", help="a version where it fails (older than "
                        "--good: find the version that fixed it)")
    search.add_argument("--package", help="the kernel package (default: the scenario's image's)")
    search.add_argument("--arch", default="arm64")
    search.add_argument("--accel", choices=["kvm", "tcg"], help="force an accelerator")
    search.add_argument("--psci", help="PSCI personality (overrides the scenario)")
    search.add_argument("--runs-dir", default="runs", help="where run directories go (default: ./runs)")
    search.set_defaults(handler=_bisect)
