"""A throw-away PostgreSQL server for tests (Debian's postgresql package), on loopback.

`postgres_server(port)` runs one for the length of a `with` block: a fresh cluster in a
temporary folder, trust authentication for the user `app`, stopped and removed at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa


def pg_bin(name: str) -> str:
    """The path of a PostgreSQL server program, newest version first."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise AssertionError(
            f"PostgreSQL's {name} is not installed: apt-get install postgresql (.ci/run does)"
        )
    return found[-1]


def _as_postgres(args: list[str]) -> list[str]:
    """initdb refuses to run as root; run it as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """A running PostgreSQL on 127.0.0.1:`port`; yields the SQLAlchemy URL of its `postgres`
    database (user `app`, no password)."""
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="freshkb-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    subprocess.run(
        _as_postgres([pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "app"]),
        check=True,
        capture_output=True,
    )
    # fsync off: a test server's data need not survive a power cut, and it halves commit time.
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-w", "start"]
    subprocess.run(
        _as_postgres([*start, "-l", str(root / "pg.log")]), check=True, capture_output=True
    )
    try:
        yield f"postgresql+psycopg://app@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def new_database(server_url: str, name: str) -> str:
    """Create an empty database `name` on the server; returns its URL."""
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return str(sa.engine.make_url(server_url).set(database=name))
