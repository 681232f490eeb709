"""Passage vectors (embeddings/passages.py): what a chunk's passages are, how their vectors
travel, and how a search orders its candidate pages by them, on a real Weaviate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from store_contract import DIM, MODEL, embedded, write

from freshkb.core.records import EmbeddedChunk, SourceKind
from freshkb.embeddings.cache import VectorCache
from freshkb.embeddings.passages import (
    MIN_PASSAGE_WORDS,
    best_similarity,
    chunk_passages,
    decode_rows,
    embed_passages,
    encode_rows,
)
from freshkb.store.search import by_passages

QUERY = [1.0, 0.0, 0.0, 0.0]


class AxisEmbedder:
    """Texts to fixed 4-d vectors by their first word; counts what it was asked."""

    model_id = "axis-model"
    dimension = DIM
    max_tokens = 128
    AXES = {"refunds": 0, "shipping": 1, "warranty": 2}

    def __init__(self) -> None:
        self.asked: list[str] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.asked += texts
        vectors = []
        for text in texts:
            vector = [0.0] * DIM
            vector[self.AXES.get(text.split()[0].lower(), 3)] = 1.0
            vectors.append(vector)
        return vectors


@pytest.mark.timeout(10)
def test_passages_are_the_sentences_of_five_words_or_more_each_once() -> None:
    text = (
        "Refunds are paid within thirty days of the return. Call us.\n"
        "Refunds are paid within thirty days of the return. Shipping is free on orders over $50."
    )
    assert chunk_passages(text) == [
        "Refunds are paid within thirty days of the return.",
        "Shipping is free on orders over $50.",
    ]
    assert chunk_passages("Call us. Page 3 of 9.") == []  # too short to say anything alone
    assert MIN_PASSAGE_WORDS == 5


@pytest.mark.timeout(10)
def test_rows_travel_as_unit_float16_and_anything_else_reads_as_none() -> None:
    blob = encode_rows([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    rows = decode_rows(blob, DIM)
    assert rows is not None and rows.shape == (2, DIM)
    assert np.allclose(rows, [[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], atol=1e-3)
    assert decode_rows(blob, 3) is None  # 8 numbers are not rows of 3
    assert decode_rows("", DIM) is None
    assert decode_rows("not base64!", DIM) is None
    flat = list(rows.ravel())
    assert best_similarity([2.0, 0.0, 0.0, 0.0], flat) == pytest.approx(0.6, abs=1e-3)
    assert best_similarity([0.0, 0.0, 0.0, 5.0], flat) == pytest.approx(1.0, abs=1e-3)
    assert best_similarity(QUERY, None) is None
    assert best_similarity(QUERY, flat[:6]) is None  # not whole rows of this dimension


@pytest.mark.timeout(10)
def test_each_distinct_passage_is_embedded_once_then_comes_from_the_cache(tmp_path: Any) -> None:
    texts = [
        "Refunds are paid within thirty days. Shipping takes five working days at most.",
        "Refunds are paid within thirty days. Warranty claims need the original receipt.",
        "Table: 12 | 40 | 7",  # no passage of five words: the chunk stands for itself
    ]
    chunks = [item.chunk for item in embedded("guide.pdf", texts)]
    own = {c.chunk_hash: [0.0, 0.0, 0.6, 0.8] for c in chunks}
    embedder, cache = AxisEmbedder(), VectorCache(tmp_path / "cache.sqlite3")
    rows, count = embed_passages(chunks, own, embedder, cache)
    assert count == 3 and len(embedder.asked) == 3  # the shared refunds sentence once
    first = decode_rows(rows[chunks[0].chunk_hash], DIM)
    assert first is not None and np.allclose(first, [[1, 0, 0, 0], [0, 1, 0, 0]])
    table = decode_rows(rows[chunks[2].chunk_hash], DIM)
    assert table is not None and np.allclose(table, [[0.0, 0.0, 0.6, 0.8]], atol=1e-3)
    again, count = embed_passages(chunks, own, embedder, VectorCache(tmp_path / "cache.sqlite3"))
    assert count == 0 and len(embedder.asked) == 3 and again == rows


def _candidate(uuid: str, score: float) -> tuple[Any, SourceKind]:
    obj = SimpleNamespace(uuid=uuid, properties={}, metadata=SimpleNamespace(score=score))
    return obj, SourceKind.DOCUMENTS


@pytest.mark.timeout(10)
def test_pages_are_ordered_by_score_plus_their_best_passage_unless_one_has_none() -> None:
    about, answers, old = (
        _candidate("about", 1.0),
        _candidate("answers", 0.6),
        _candidate("old", 0.1),
    )
    rows: dict[str, Any] = {
        "about": [0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.7, 0.0],
        "answers": [0.0, 1.0, 0.0, 0.0, *QUERY],
    }
    # 1.0 + 0.5 against 0.6 + 1.0: the page one sentence of which answers goes first
    assert [o.uuid for o, _ in by_passages(QUERY, [about, answers], rows)] == ["answers", "about"]
    ordered = by_passages(QUERY, [about, answers, old], rows | {"old": None})
    assert [o.uuid for o, _ in ordered] == ["about", "answers", "old"]


def _page(key: str, vector: list[float], passages: list[list[float]] | None) -> EmbeddedChunk:
    # the same words in another order: the same BM25 score, another chunk (hash)
    words = ["refund", "window", "rules", "for", "returns"]
    text = " ".join(words if key.startswith("about") else reversed(words))
    item = embedded(key, [text])[0]
    blob = encode_rows(passages) if passages is not None else ""
    return EmbeddedChunk(replace(item.chunk, page=1), tuple(vector), blob)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_search_puts_the_page_whose_passage_answers_first_on_weaviate(store: Any) -> None:
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    # Same words; "about" is nearer as a whole chunk, "answers" has the one sentence that is.
    about = _page("about.pdf", [0.8, 0.6, 0.0, 0.0], [[0.0, 1.0, 0.0, 0.0]])
    answers = _page("answers.pdf", [0.6, 0.8, 0.0, 0.0], [[0.0, 1.0, 0.0, 0.0], QUERY])
    write(store, [about, answers])
    hits = store.search("refund window", QUERY, k=2)
    assert [h.document_key for h in hits] == ["answers.pdf", "about.pdf"]
    assert hits[1].relevance == pytest.approx(0.8)  # relevance is still the chunk's cosine
    # read once: the next search takes the rows from the store's recent reads
    assert len(store._recent.passages._kept) == 2
    again = store.search("refund window", QUERY, k=2)
    assert [h.document_key for h in again] == ["answers.pdf", "about.pdf"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_objects_written_without_passages_keep_the_hybrid_order(store: Any) -> None:
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    about = _page("about.pdf", [0.8, 0.6, 0.0, 0.0], None)
    answers = _page("answers.pdf", [0.6, 0.8, 0.0, 0.0], None)
    write(store, [about, answers])
    hits = store.search("refund window", QUERY, k=2)
    assert [h.document_key for h in hits] == ["about.pdf", "answers.pdf"]
