"""Passage vectors: each chunk's sentences embedded on their own, for re-ranking a search's pages.

A chunk of ~900 characters is embedded whole, and one sentence that answers a question is
averaged with the five around it. So every chunk also carries the vectors of its passages (the
screen's unit: sentences and lines, long ones in word windows, of at least five words), and a
search orders its candidate pages by their fused hybrid score plus the best cosine of one
passage with the question (store/search.py). On the benefits dev cases that took page hit@5
from 83.2% to 88.1% (half A 92.3 -> 94.2, half B 73.5 -> 81.6) with hit@1 61.4 -> 62.4: see
bench/results/passage-rerank-2026-12-08.md.

A chunk's passage vectors travel as one base64 string of float16 rows, each of unit length
(~5 KB for a chunk of six passages): stored with its Weaviate object, read back for the
candidates of a search (and kept a while: store/recent.py). A chunk with no passage of five
words stands for itself: its one row is the chunk's own vector.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from freshkb.core.records import Chunk
from freshkb.core.text import normalise, split_passages, word_count
from freshkb.embeddings.cache import VectorCache, embed_through
from freshkb.embeddings.embedder import Embedder

MIN_PASSAGE_WORDS = 5
# A chunk is a few sentences; a table flattened into one run of words yields windows instead.
MAX_PASSAGES = 48
SLICE = 512


def chunk_passages(text: str) -> list[str]:
    """The passages of a chunk's text that are embedded on their own, each once, in order."""
    found = (p for p in split_passages(normalise(text)) if word_count(p) >= MIN_PASSAGE_WORDS)
    return list(dict.fromkeys(found))[:MAX_PASSAGES]


def passage_key(text: str) -> str:
    """The vector cache key of a passage (never equal to a chunk's hash for the same text)."""
    return hashlib.sha256(b"passage\0" + text.encode("utf-8")).hexdigest()


def encode_rows(rows: Sequence[Sequence[float]]) -> str:
    """Vectors as base64 float16 rows of unit length (what a Weaviate blob property holds)."""
    matrix = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms == 0, 1.0, norms)
    return base64.b64encode(unit.astype("<f2").tobytes()).decode("ascii")


def decode_rows(blob: str, dimension: int) -> np.ndarray | None:
    """The rows of `encode_rows`, or None when the blob is empty or not of this dimension."""
    if not blob or dimension <= 0:
        return None
    try:
        raw = np.frombuffer(base64.b64decode(blob, validate=True), dtype="<f2")
    except ValueError:  # binascii.Error is a ValueError: not base64
        return None
    if raw.size == 0 or raw.size % dimension:
        return None
    return raw.reshape(-1, dimension).astype(np.float32)


def best_similarity(query: Sequence[float], rows: Sequence[float] | None) -> float | None:
    """The highest cosine of the query with one of a chunk's passages, given their rows (of
    unit length) one after the other; None without rows, or rows of another dimension."""
    if rows is None or not len(rows) or len(rows) % len(query):
        return None
    matrix = np.asarray(rows, dtype=np.float32).reshape(-1, len(query))
    q = np.asarray(query, dtype=np.float32)
    norm = float(np.linalg.norm(q))
    return float(np.max(matrix @ q)) / norm if norm else None


def cached_vectors(cache: VectorCache) -> Callable[[Sequence[str], str], dict[str, list[float]]]:
    """A lookup of passages' vectors under a model id in the vector cache (what
    `embed_passages` put there): the injection screen judges a chunk's passages from the
    vectors made for search when its detector runs on the same model, instead of embedding
    them again (screening/guard.py InjectionGuard.inspect_documents)."""

    def lookup(passages: Sequence[str], model_id: str) -> dict[str, list[float]]:
        keys = {passage_key(p): p for p in passages}
        return {keys[key]: v for key, v in cache.get_many(keys, model_id).items()}

    return lookup


def embed_passages(
    chunks: Sequence[Chunk],
    vectors: Mapping[str, Sequence[float]],
    embedder: Embedder,
    cache: VectorCache | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, str], int]:
    """Each chunk's passage rows (encode_rows) by chunk hash, and how many passages were
    embedded; `vectors` are the chunks' own vectors by hash. Passages seen before with this
    model come from the cache (page headers and footers repeat across a PDF's pages)."""
    passages = {c.chunk_hash: chunk_passages(c.text) for c in chunks}
    keys = {p: passage_key(p) for group in passages.values() for p in group}
    found = cache.get_many(keys.values(), embedder.model_id) if cache else {}
    todo = [(key, p) for p, key in keys.items() if key not in found]
    found |= embed_through(todo, embedder, cache, SLICE, progress)
    rows = {
        chunk_hash: encode_rows([found[keys[p]] for p in group] or [vectors[chunk_hash]])
        for chunk_hash, group in passages.items()
    }
    return rows, len(todo)
