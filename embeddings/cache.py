"""Vectors cached by (chunk hash, model id), so an unchanged chunk is never embedded twice.

SQLite in the data directory: one file, safe for concurrent readers, no server. A different
model id is a different key, so changing the model can never return another model's vector.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    chunk_hash TEXT NOT NULL,
    model_id TEXT NOT NULL,
    dimension INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (chunk_hash, model_id)
) WITHOUT ROWID
"""

# SQLite's default limit on bound parameters per statement is 999 on old builds.
_LOOKUP_BATCH = 500


class VectorCache:
    """A persistent map (chunk_hash, model_id) -> float32 vector."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get_many(self, chunk_hashes: Iterable[str], model_id: str) -> dict[str, list[float]]:
        """Cached vectors for the hashes that have one."""
        wanted = list(dict.fromkeys(chunk_hashes))
        found: dict[str, list[float]] = {}
        for start in range(0, len(wanted), _LOOKUP_BATCH):
            batch = wanted[start : start + _LOOKUP_BATCH]
            marks = ",".join("?" * len(batch))
            rows = self._db.execute(
                "SELECT chunk_hash, vector FROM vectors"
                f" WHERE model_id = ? AND chunk_hash IN ({marks})",
                [model_id, *batch],
            )
            for chunk_hash, blob in rows:
                found[chunk_hash] = array("f", blob).tolist()
        return found

    def put_many(self, items: Sequence[tuple[str, list[float]]], model_id: str) -> None:
        """Store vectors; an existing entry for the same key is replaced."""
        self._db.executemany(
            "INSERT OR REPLACE INTO vectors (chunk_hash, model_id, dimension, vector) "
            "VALUES (?, ?, ?, ?)",
            [(h, model_id, len(v), array("f", v).tobytes()) for h, v in items],
        )
        self._db.commit()

    def count(self, model_id: str | None = None) -> int:
        """Number of cached vectors, for one model or all."""
        if model_id is None:
            return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM vectors WHERE model_id = ?", [model_id]
            ).fetchone()[0]
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()
