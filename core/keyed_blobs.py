"""Values stored by (key, scope) in one SQL table: the store under freshkb's caches.

The vector cache (key: chunk hash, scope: model id) and the verdict cache (key: text hash,
scope: detector key) are the same thing on different tables: look many keys up in one scope,
save many, last write wins. A SQLite file by default; any SQLAlchemy URL (PostgreSQL) so that
every worker of a cluster shares one cache. The table is created on first use, in the shape
earlier releases created in SQLite, so caches users already have are read as they are.

Safe under threads and processes: one engine with a connection pool per store, a connection
per operation, upserts that are atomic per row (core/sql.py's `upsert`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from freshkb.core.sql import sql_engine, upsert

# SQLite's default limit on bound parameters per statement is 999 on old builds.
LOOKUP_BATCH = 500


class KeyedBlobs:
    """A table whose primary key is (key, scope) and whose `value` column holds the payload."""

    def __init__(self, url: str, table: sa.Table, value: str, busy_seconds: float = 10.0):
        key, scope = table.primary_key.columns
        self.url = url
        self.table = table
        self._key = key
        self._scope = scope
        self._value = table.c[value]
        self.engine = sql_engine(url, table.metadata, busy_seconds)

    def get_many(self, keys: Iterable[str], scope: str) -> dict[str, Any]:
        """The stored values of the keys that have one in `scope`, in batched lookups."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[start : start + LOOKUP_BATCH]
                rows = connection.execute(
                    sa.select(self._key, self._value).where(
                        self._scope == scope, self._key.in_(batch)
                    )
                )
                found.update((key, value) for key, value in rows)
        return found

    def put_many(self, scope: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Save rows (every column but the scope) in one transaction; same keys are replaced."""
        if not rows:
            return
        with self.engine.begin() as connection:
            upsert(connection, self.table, [{**row, self._scope.name: scope} for row in rows])

    def count(self, scope: str | None = None) -> int:
        """Number of stored values, in one scope or all."""
        query = sa.select(sa.func.count()).select_from(self.table)
        if scope is not None:
            query = query.where(self._scope == scope)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()
