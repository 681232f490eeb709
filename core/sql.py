"""The one way freshkb opens its operational SQL database (ledger, escalations, feedback).

SQLite in the data directory by default, any SQLAlchemy URL (PostgreSQL) in production.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

import sqlalchemy as sa


def sql_engine(url: str, metadata: sa.MetaData | None = None) -> sa.Engine:
    """An engine for `url` (a SQLite file is created if missing), with `metadata`'s tables."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    sqlite = url.startswith("sqlite")
    # A server database may drop idle connections (a restart, a proxy): test each one before
    # use. A SQLite file has no connection to lose, and the ping would cost every query.
    engine = sa.create_engine(url, pool_pre_ping=not sqlite)
    if sqlite:
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    if metadata is not None:
        metadata.create_all(engine)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the answer service read while a flow run writes; wait instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    # With WAL, NORMAL syncs at checkpoints rather than at every commit: still never corrupt,
    # and nothing is lost when a process dies; a power cut may lose the last commits. Each
    # logged answer otherwise waited for an fsync (about 20 ms under load, measured).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


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
