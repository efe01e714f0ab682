"""The results store: an index of run records in SQLite (a file beside the runs) or PostgreSQL (a fleet's).

One database layer, SQLAlchemy Core, speaks to both. The store owns its schema: it creates it in an
empty database, records its version, and refuses a database whose tables are someone else's or
were written by a newer lab. Every write is one transaction: a batch that fails half-way leaves
the index as it was. Errors are one line (StoreError, exit status 2) that never shows a password.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import JSON, Column, Float, Integer, MetaData, String, Table, Text, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from lab.errors import LabError
from lab.results import DATABASE_FILE
from lab.results.known import known_issue, known_issues_file, load_known_issues
from lab.results.record import RunRecord, read_directory

SCHEMA_VERSION = 1
SCHEMA_LOCK = 0x1AB19
"""The PostgreSQL advisory lock the store's schema is created under."""
URL_VARIABLE = "LAB_RESULTS_DB"

_metadata = MetaData()
_meta = Table("lab_results_meta", _metadata, Column("key", String(64), primary_key=True),
              Column("value", String(200), nullable=False))
_runs = Table(
    "lab_runs", _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_dir", String(1024), nullable=False, unique=True),
    Column("cell", String(512), nullable=False, index=True),
    Column("scenario", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("started", String(32), nullable=False, index=True),
    Column("matrix", String(200), index=True),
    Column("night", String(300), index=True),
    Column("attempt", Integer, nullable=False),
    *(Column(name, String(300)) for name in ("arch", "kernel_package", "kernel_version", "kernel_release", "qemu",
                                              "off2_contract", "accel", "psci", "lab_host", "host_kernel",
                                              "lab_version")),
    *(Column(name, Float) for name in ("seconds", "hibernate_seconds", "resume_seconds")),
    *(Column(name, JSON, nullable=False) for name in ("classes", "findings", "phases", "kernel_timings")),
)


class StoreError(LabError):
    """The database cannot be used: unreachable, corrupt, foreign, or newer than this lab."""


def default_url(runs_root: Path) -> str:
    """The store's URL: LAB_RESULTS_DB if set (a fleet's PostgreSQL), else a SQLite file beside the runs."""
    return os.environ.get(URL_VARIABLE) or f"sqlite:///{runs_root.resolve() / DATABASE_FILE}"


def _shown(url: str) -> str:
    try:
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the given URL"


def _why(error: SQLAlchemyError) -> str:
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__


class ResultsStore:
    """An open store; `with ResultsStore(url) as store:` checks its schema on entry, and creates it in an empty
    database if `create` (commands that only read refuse an empty one, and never create a SQLite file)."""

    def __init__(self, url: str, create: bool = False) -> None:
        self.url = url
        self.create = create
        self.engine: Engine | None = None

    def __enter__(self) -> ResultsStore:
        try:
            self.engine = sqlalchemy.create_engine(self.url)
        except (ArgumentError, NoSuchModuleError, ImportError) as error:
            raise StoreError(f"results database {_shown(self.url)}: not a database URL the lab can use ({error})")\
                from None
        database = self.engine.url.database if self.engine.url.get_backend_name() == "sqlite" else None
        if not self.create and database and not Path(database).exists():
            raise StoreError(f"no results store at {database}: `lab results import RUNS_DIR` makes one")
        with self._connection() as connection:
            self._check_schema(connection)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.engine is not None:
            self.engine.dispose()

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """One transaction: committed at the end, rolled back if anything in it fails."""
        if self.engine is None:
            raise StoreError("the results store is not open")
        try:
            with self.engine.begin() as connection:
                yield connection
        except DBAPIError as error:
            raise StoreError(f"results database {_shown(self.url)}: {_why(error)}") from None
        except SQLAlchemyError as error:
            raise StoreError(f"results database {_shown(self.url)}: {_why(error)}") from None

    def _check_schema(self, connection: Connection) -> None:
        """Create the schema in an empty database, else check it is this lab's; on PostgreSQL under a lock held
        until the transaction ends, so that a fleet's nodes starting at once create it once."""
        if connection.dialect.name == "postgresql":
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        tables = set(sqlalchemy.inspect(connection).get_table_names())
        if not tables and not self.create:
            raise StoreError(f"results database {_shown(self.url)} is empty: `lab results import RUNS_DIR` fills it")
        if not tables:
            _metadata.create_all(connection)
            connection.execute(_meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        if _meta.name not in tables:
            raise StoreError(f"results database {_shown(self.url)} holds other tables ({', '.join(sorted(tables)[:3])}"
                             "…), not a lab results store")
        found = connection.execute(select(_meta.c.value).where(_meta.c.key == "schema_version")).scalar()
        if found is None or not found.isdigit():
            raise StoreError(f"results database {_shown(self.url)} has no schema version: not a lab results store")
        if int(found) > SCHEMA_VERSION:
            raise StoreError(f"results database {_shown(self.url)} is at schema version {found}, newer than this "
                             f"lab's {SCHEMA_VERSION}: upgrade the lab")
        if _runs.name not in tables:
            raise StoreError(f"results database {_shown(self.url)} lacks its {_runs.name} table: rebuild it with "
                             "`lab results import` into a new database")

    def put(self, records: Iterable[RunRecord]) -> int:
        """Index `records` (replacing what the store had for their run directories), all or none."""
        rows = [record.to_row() for record in records]
        with self._connection() as connection:
            for start in range(0, len(rows), 500):
                batch = rows[start:start + 500]
                connection.execute(_runs.delete().where(_runs.c.run_dir.in_([row["run_dir"] for row in batch])))
                connection.execute(_runs.insert(), batch)
        return len(rows)

    def _select(self, *conditions: Any) -> list[RunRecord]:
        query = select(_runs).where(*conditions).order_by(_runs.c.started, _runs.c.cell, _runs.c.attempt)
        with self._connection() as connection:
            return [RunRecord.from_row(dict(row._mapping)) for row in connection.execute(query)]

    def night(self, name: str) -> list[RunRecord]:
        return self._select(_runs.c.night == name)

    def run(self, key: str) -> RunRecord | None:
        """A run by its store id or its directory."""
        condition = _runs.c.id == int(key) if key.isdigit() else _runs.c.run_dir == str(Path(key).resolve())
        found = self._select(condition)
        return found[0] if found else None

    def nights(self, matrix: str | None = None) -> list[tuple[str, str]]:
        """(matrix, night) of every matrix run, oldest first; of one matrix if given."""
        query = select(_runs.c.matrix, _runs.c.night, sqlalchemy.func.min(_runs.c.started).label("started"))\
            .where(_runs.c.night.is_not(None)).group_by(_runs.c.matrix, _runs.c.night).order_by("started")
        if matrix is not None:
            query = query.where(_runs.c.matrix == matrix)
        with self._connection() as connection:
            return [(row.matrix, row.night) for row in connection.execute(query)]

    def history(self, matrix: str) -> list[RunRecord]:
        """Every attempt of every cell of a matrix, oldest night first."""
        return self._select(_runs.c.matrix == matrix)

    def single_runs(self, scenario: str | None = None) -> list[RunRecord]:
        """Runs outside any matrix (of one scenario if given), oldest first."""
        if scenario is None:
            return self._select(_runs.c.night.is_(None))
        return self._select(_runs.c.night.is_(None), _runs.c.scenario == scenario)

    def listing(self) -> list[tuple[str, str, str, str]]:
        """Every night and every run outside a matrix, oldest first: (id for `lab compare`, matrix or scenario,
        counts of the cells' final statuses, started)."""
        cells = select(_runs.c.night, _runs.c.matrix, _runs.c.cell, _runs.c.status, _runs.c.started)\
            .where(_runs.c.night.is_not(None)).order_by(_runs.c.attempt)
        runs = select(_runs.c.id, _runs.c.scenario, _runs.c.status, _runs.c.started).where(_runs.c.night.is_(None))
        with self._connection() as connection:
            final = {(night, matrix, started, cell): status
                     for night, matrix, cell, status, started in connection.execute(cells)}
            rows = [(str(run_id), scenario, f"1 {status}", started)
                    for run_id, scenario, status, started in connection.execute(runs)]
        nights: dict[tuple[str, str, str], Counter[str]] = {}
        for (night, matrix, started, _), status in final.items():
            nights.setdefault((night, matrix, started), Counter())[status] += 1
        rows += [(night, matrix, ", ".join(f"{count} {status}" for status, count in sorted(counts.items())), started)
                 for (night, matrix, started), counts in nights.items()]
        return sorted(rows, key=lambda row: row[3])

    def count(self) -> int:
        with self._connection() as connection:
            return int(connection.execute(select(sqlalchemy.func.count()).select_from(_runs)).scalar() or 0)


def index_quietly(directory: Path, runs_root: Path) -> list[str]:
    """Index a run or matrix directory that just finished, and say which of its failures are known issues
    (known-issues.yaml in the runs directory). A store that fails is a line to show, not a failed run:
    `lab results import` can index it later."""
    try:
        records = read_directory(directory)
        with ResultsStore(default_url(runs_root), create=True) as store:
            store.put(records)
    except LabError as error:
        return [f"results store: {directory} not indexed: {error}"]
    try:
        issues = load_known_issues(known_issues_file(runs_root))
    except LabError as error:
        return [f"known issues: {error}"]
    lines = []
    for record in records:
        if (issue := known_issue(record, issues)) is not None:
            lines.append(f"{record.cell}: {record.status} is known issue {issue.id} ({issue.link}): {issue.advice}")
    return lines
