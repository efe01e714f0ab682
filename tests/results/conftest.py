"""The results store's backends: a SQLite file, and a real PostgreSQL started here for the session.

PostgreSQL is Debian's `postgresql` package: a private cluster in a temporary directory, on a unix
socket only, run as the `postgres` user (initdb refuses root), stopped in a `finally`. A missing
package fails the tests with the line that installs it: they never skip.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

PG_PORT = 54329
_databases = itertools.count()


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (the results store tests need it)",
                    pytrace=False)
    return found[-1].parent


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A running private PostgreSQL; yields the SQLAlchemy URL of its `postgres` database."""
    binaries = _pg_bin()
    directory = Path(tempfile.mkdtemp(prefix="lab-pg-"))
    shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    _as_postgres(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    try:
        _as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(directory / "log"), "-w", "-t", "60",
                     "-o", f"-k {directory} -p {PG_PORT} -c listen_addresses=", "start")
        yield f"postgresql+psycopg://postgres@/postgres?host={directory}&port={PG_PORT}"
    finally:
        if (data / "postmaster.pid").exists():
            _as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store on each backend: a new SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    server = request.getfixturevalue("postgres_server")
    name = f"lab_test_{next(_databases)}"
    engine = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    finally:
        engine.dispose()
    return server.replace("/postgres?", f"/{name}?")
