"""Vectors cached by (chunk hash, model id), so an unchanged chunk is never embedded twice.

A SQLite file in the data directory by default: safe for concurrent readers, no server. With
`cache_url` (PostgreSQL), one table every worker shares, so a chunk embedded on one machine is
never embedded on another. A different model id is a different key, so changing the model can
never return another model's vector.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import sqlalchemy as sa

from freshkb.core.config import Settings
from freshkb.core.keyed_blobs import KeyedBlobs
from freshkb.core.sql import sqlite_url
from freshkb.embeddings.embedder import Embedder

metadata = sa.MetaData()

# The table earlier releases created in SQLite by hand: same names, so old caches still count.
vectors_table = sa.Table(
    "vectors",
    metadata,
    sa.Column("chunk_hash", sa.Text, primary_key=True),
    sa.Column("model_id", sa.Text, primary_key=True),
    sa.Column("dimension", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32, native byte order
    sqlite_with_rowid=False,
)


class VectorCache:
    """A persistent map (chunk_hash, model_id) -> float32 vector."""

    def __init__(self, location: Path | str):
        """Open the cache in a SQLite file (a Path) or at a SQLAlchemy URL (a str)."""
        url = sqlite_url(location) if isinstance(location, Path) else location
        # An ingest waits for another one's write rather than embedding everything again.
        self._blobs = KeyedBlobs(url, vectors_table, "vector", busy_seconds=30.0)
        self.url = url

    def get_many(self, chunk_hashes: Iterable[str], model_id: str) -> dict[str, list[float]]:
        """Cached vectors for the hashes that have one."""
        found = self._blobs.get_many(chunk_hashes, model_id)
        return {chunk_hash: array("f", blob).tolist() for chunk_hash, blob in found.items()}

    def put_many(self, items: Sequence[tuple[str, list[float]]], model_id: str) -> None:
        """Store vectors; an existing entry for the same key is replaced."""
        self._blobs.put_many(
            model_id,
            [
                {"chunk_hash": h, "dimension": len(v), "vector": array("f", v).tobytes()}
                for h, v in items
            ],
        )

    def count(self, model_id: str | None = None) -> int:
        """Number of cached vectors, for one model or all."""
        return self._blobs.count(model_id)

    def close(self) -> None:
        """Release the database connections."""
        self._blobs.close()


def open_vector_cache(settings: Settings) -> VectorCache:
    """The vector cache the settings name: `cache_url`, else the SQLite file in the data dir."""
    return VectorCache(settings.cache_url or settings.embedding_cache_path)


def embed_through(
    pending: Sequence[tuple[str, str]],
    embedder: Embedder,
    cache: VectorCache | None,
    size: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Vectors of (key, text) pairs, embedded `size` texts per call, each slice cached at once
    (a crash loses little work) and counted on the progress bar."""
    fresh: dict[str, list[float]] = {}
    if progress:
        progress(0, len(pending))
    for start in range(0, len(pending), size):
        part = pending[start : start + size]
        vectors = embedder.embed([text for _, text in part])
        computed = [(key, list(v)) for (key, _), v in zip(part, vectors, strict=True)]
        fresh.update(computed)
        if cache:
            cache.put_many(computed, embedder.model_id)
        if progress:
            progress(start + len(part), len(pending))
    return fresh
