"""Retrieval returns pages, not near-copies: the best chunk of each (document, page), the k best
pages, on a real Weaviate; chunks without a page (Markdown sections, customer records) are each
their own."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from store_contract import DIM, MODEL, embedded, write

from freshkb.core.records import EmbeddedChunk, SourceKind
from freshkb.store.search import best_per_page

QUERY = [1.0, 0.0, 0.0, 0.0]


def on_pages(key: str, pages: list[int | None], vectors: list[list[float]]) -> list[EmbeddedChunk]:
    """Chunks of one document on the given pages, all about refunds, with the given vectors."""
    texts = [f"refund window rule {n} of {key}" for n in range(len(pages))]
    return [
        EmbeddedChunk(replace(item.chunk, page=page), tuple(vector))
        for item, page, vector in zip(embedded(key, texts), pages, vectors, strict=True)
    ]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_page_split_into_chunks_fills_one_place_not_all_of_them(store: Any) -> None:
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    # Page 1 is three chunks, all closest to the question: without grouping they fill the top 3.
    near, off, far = [1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]
    guide = on_pages("guide.pdf", [1, 1, 1, 2, 3], [near, near, near, off, far])
    write(store, guide)
    hits = store.search("refund window", QUERY, k=3)
    assert [(h.document_key, h.page) for h in hits] == [
        ("guide.pdf", 1),
        ("guide.pdf", 2),
        ("guide.pdf", 3),
    ]
    assert hits[0].relevance == pytest.approx(1.0)
    page_one = {item.chunk.uuid for item in guide[:3]}
    assert hits[0].uuid in page_one  # the best of page 1's chunks stands for it


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_chunks_without_pages_are_each_their_own_hit(store: Any) -> None:
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    near = [1.0, 0.0, 0.0, 0.0]
    write(store, on_pages("returns.md", [None, None, None], [near, near, near]))
    hits = store.search("refund window", QUERY, k=3)
    assert len(hits) == 3 and len({h.uuid for h in hits}) == 3


@pytest.mark.timeout(10)
def test_best_per_page_keeps_the_first_of_each_page_in_rank_order() -> None:
    def candidate(uuid: str, document: str, page: int | None) -> tuple[Any, SourceKind]:
        obj = SimpleNamespace(uuid=uuid, properties={"document_id": document, "page": page})
        return obj, SourceKind.DOCUMENTS

    ranked = [
        candidate("a1", "a", 1),
        candidate("a1-again", "a", 1),
        candidate("b1", "b", 1),  # page 1 of another document is another page
        candidate("r1", "rec", None),
        candidate("r2", "rec", None),  # no page: kept, each record or section is its own
        candidate("a2", "a", 2),
    ]
    kept = [obj.uuid for obj, _ in best_per_page(ranked)]
    assert kept == ["a1", "b1", "r1", "r2", "a2"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_alpha_weighs_keywords_against_vectors(store: Any) -> None:
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    # One chunk says the query's words but points away; the other points at it but says none.
    words = on_pages("words.pdf", [1], [[0.0, 1.0, 0.0, 0.0]])
    meaning = [
        EmbeddedChunk(replace(item.chunk, page=1), (1.0, 0.0, 0.0, 0.0))
        for item in embedded("meaning.pdf", ["unrelated wording entirely"])
    ]
    write(store, words + meaning)
    keywords = store.search("refund window", QUERY, k=2, alpha=0.0)
    vectors = store.search("refund window", QUERY, k=2, alpha=1.0)
    assert keywords[0].document_key == "words.pdf"
    assert vectors[0].document_key == "meaning.pdf"


@pytest.mark.timeout(10)
def test_the_answer_service_searches_with_the_configured_alpha() -> None:
    from freshkb.core.config import Settings
    from freshkb.serving.service import AnswerService

    calls: list[dict[str, Any]] = []
    store = SimpleNamespace(search=lambda *args, **kwargs: calls.append(kwargs) or [])
    embedder = SimpleNamespace(embed=lambda texts: [QUERY for _ in texts])
    source = SimpleNamespace(kind="documents", usable=True, name="policies")
    ledger = SimpleNamespace(states=lambda: [source])
    none: Any = None
    service = AnswerService(
        Settings(search_alpha=0.25),
        store,
        embedder,
        ledger,
        none,
        none,
        none,  # type: ignore[arg-type]
    )
    service.retrieve("refund window")
    assert calls[0]["alpha"] == 0.25 and calls[0]["sources"] == ["policies"]
