"""The one way freshkb opens its operational SQL databases (ledger, caches, escalations, ...).

SQLite in the data directory by default, any SQLAlchemy URL (PostgreSQL) in production.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect

from freshkb.core.group_commit import GroupCommit

# Tries to create missing tables when other processes are creating them at the same moment.
_CREATE_ATTEMPTS = 5
# Seconds to wait for a PostgreSQL server to accept a connection (unless the URL says).
_CONNECT_SECONDS = 10


def sql_engine(
    url: str, metadata: sa.MetaData | None = None, busy_seconds: float = 10.0
) -> sa.Engine:
    """An engine for `url` (a SQLite file is created if missing), with `metadata`'s tables.

    `busy_seconds` is how long a SQLite connection waits for another process's write lock.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    sqlite = url.startswith("sqlite")
    # A server database may drop idle connections (a restart, a proxy): test each one before
    # use. A SQLite file has no connection to lose, and the ping would cost every query.
    engine = sa.create_engine(url, pool_pre_ping=not sqlite, connect_args=_connect_args(url))
    if sqlite:
        sa.event.listen(engine, "connect", partial(_sqlite_pragmas, busy_seconds))
    if metadata is not None:
        create_tables(engine, metadata)
    return engine


def _connect_args(url: str) -> dict[str, Any]:
    """A bound on connecting to PostgreSQL: an unreachable host otherwise hangs each worker for
    the operating system's TCP timeout (minutes) instead of failing, or missing a cache."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        return {"connect_timeout": _CONNECT_SECONDS}
    return {}


def create_tables(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create the tables that do not exist yet, also when other processes do so at once."""
    for attempt in range(_CREATE_ATTEMPTS):
        # A database that cannot be reached (or a file that is no database) fails here, once.
        with engine.connect() as connection:
            try:
                with connection.begin():
                    metadata.create_all(connection)
                return
            except sa.exc.DBAPIError:
                # Workers starting on a fresh database all see no table and all create it:
                # the losers fail (PostgreSQL: a duplicate pg_type row; SQLite: "already
                # exists" or "locked"), and a later look finds the table there.
                if attempt == _CREATE_ATTEMPTS - 1:
                    raise
        time.sleep(0.05 * 2**attempt)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path}"


def display_url(url: str) -> str:
    """A database URL fit for messages: its password masked."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(an unparseable URL)"


def grouped_inserts(engine: sa.Engine, table: sa.Table) -> GroupCommit[dict[str, Any]]:
    """Inserts of rows into `table` from concurrent callers, sharing transactions
    (core/group_commit.py); a row refused for its own data fails alone."""

    def insert(rows: Sequence[dict[str, Any]]) -> None:
        with engine.begin() as connection:
            connection.execute(sa.insert(table), list(rows))

    return GroupCommit(insert, _row_error)


def _row_error(exc: Exception) -> bool:
    """True for an error one row's data can cause (a duplicate key, a value a column refuses),
    as opposed to the database being down, locked or unreachable."""
    return isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError)


def upsert(connection: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows; where the primary key exists, update the columns the rows carry.

    INSERT ... ON CONFLICT DO UPDATE on PostgreSQL and SQLite: atomic per row, so concurrent
    writers of one key never fail, the last one wins, and columns the rows leave out keep their
    values. Elsewhere an update, then an insert where it found no row, in the caller's
    transaction.
    """
    if not rows:
        return
    keys = [column.name for column in table.primary_key.columns]
    changed = [name for name in rows[0] if name not in keys]
    # One row per key (PostgreSQL refuses to update a row twice in one statement), in key
    # order, so two writers of overlapping keys lock rows in the same order: no deadlock.
    unique = {tuple(row[key] for key in keys): row for row in rows}
    rows = [unique[key] for key in sorted(unique)]
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = (postgresql if dialect == "postgresql" else sqlite_dialect).insert(table)
        connection.execute(
            insert.on_conflict_do_update(
                index_elements=keys, set_={name: insert.excluded[name] for name in changed}
            ),
            list(rows),
        )
        return
    for row in rows:
        match = [table.c[key] == row[key] for key in keys]
        updated = connection.execute(
            sa.update(table).where(*match).values({name: row[name] for name in changed})
        )
        if updated.rowcount == 0:
            connection.execute(sa.insert(table).values(dict(row)))


def _sqlite_pragmas(busy_seconds: float, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Wait for another process's lock instead of failing; first, as WAL itself needs a lock.
    cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
    # WAL lets the answer service read while a flow run writes.
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        _switch_to_wal(cursor)
    # With WAL, NORMAL syncs at checkpoints rather than at every commit: still never corrupt,
    # and nothing is lost when a process dies; a power cut may lose the last commits. Each
    # logged answer otherwise waited for an fsync (about 20 ms under load, measured).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """Put a new database file in WAL mode; SQLite refuses at once, without waiting, while
    another process opening the same new file does so (two workers' first use)."""
    for attempt in range(_CREATE_ATTEMPTS * 4):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if attempt == _CREATE_ATTEMPTS * 4 - 1:
                raise
            time.sleep(0.05)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime: SQLite hands back naive ones, and everything
    freshkb stores is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
