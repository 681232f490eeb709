"""The embed step: vectors for a batch of chunks, from the cache where possible."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from freshkb.core.records import Chunk, EmbeddedChunk
from freshkb.embeddings.cache import VectorCache, embed_through
from freshkb.embeddings.chunking import embedding_text
from freshkb.embeddings.embedder import Embedder
from freshkb.embeddings.passages import embed_passages

# Texts handed to the model per call: large enough to fill GPU batches, small enough for the
# progress bar to move and for a crash to lose little work (each slice is cached at once).
SLICE = 256


@dataclass(frozen=True)
class EmbedStats:
    """How many chunk vectors were computed and how many came from the cache, and how many of
    their passages were embedded (the others came from the cache)."""

    computed: int
    cached: int
    passages: int = 0


def embed_chunks(
    chunks: Sequence[Chunk],
    embedder: Embedder,
    cache: VectorCache | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[EmbeddedChunk], EmbedStats]:
    """Attach a vector, and its passages' vectors (embeddings/passages.py), to every chunk; only
    chunks and passages never embedded with this model hit the model."""
    cached = cache.get_many((c.chunk_hash for c in chunks), embedder.model_id) if cache else {}
    todo: dict[str, str] = {}
    for chunk in chunks:
        if chunk.chunk_hash not in cached:
            todo.setdefault(
                chunk.chunk_hash, embedding_text(chunk.title, chunk.section_title, chunk.text)
            )
    pending = list(todo.items())
    fresh = embed_through(pending, embedder, cache, SLICE, progress)
    vectors_by_hash = {**cached, **fresh}
    # the bar goes on over the passages: its total grows by their number
    after_chunks = None if progress is None else _offset(progress, len(pending))
    passages, passages_embedded = embed_passages(
        chunks, vectors_by_hash, embedder, cache, after_chunks
    )
    embedded = [
        EmbeddedChunk(chunk, tuple(vectors_by_hash[chunk.chunk_hash]), passages[chunk.chunk_hash])
        for chunk in chunks
    ]
    from_cache = sum(1 for chunk in chunks if chunk.chunk_hash in cached)
    return embedded, EmbedStats(len(fresh), from_cache, passages_embedded)


def _offset(progress: Callable[[int, int], None], done: int) -> Callable[[int, int], None]:
    """A progress callback that counts `done` items before its own."""
    return lambda more, total: progress(done + more, done + total)
