"""The Weaviate store against a real server: schema, idempotent writes, deletes, tenants."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from freshkb.core import ids
from freshkb.core.errors import ConfigError
from freshkb.core.records import Chunk, EmbeddedChunk, SourceKind

pytestmark = [pytest.mark.integration]

DIM = 4
MODEL = "test-model"


def embedded(
    key: str,
    texts: list[str],
    kind: SourceKind = SourceKind.DOCUMENTS,
    customer_id: str | None = None,
    version: str = "v1",
) -> list[EmbeddedChunk]:
    """Chunks of one document with simple, distinct vectors."""
    doc_id = ids.document_id("src", key)
    items = []
    for position, text in enumerate(texts):
        chunk = Chunk(
            uuid=ids.chunk_uuid(doc_id, position),
            document_id=doc_id,
            position=position,
            chunk_count=len(texts),
            text=text,
            chunk_hash=ids.content_hash(text),
            source="src",
            kind=kind,
            key=key,
            title=key,
            section_title=None,
            page=position + 1,
            content_hash=ids.content_hash(version, *texts),
            modified_at=datetime.now(UTC),
            customer_id=customer_id,
        )
        vector = [0.0] * DIM
        vector[position % DIM] = 1.0
        items.append(EmbeddedChunk(chunk, tuple(vector)))
    return items


def write(store, items):
    """Upsert with fixed run metadata."""
    return store.upsert(items, ingested_at=datetime.now(UTC), flow_run_id="run-1", model_id=MODEL)


def test_writing_the_same_chunks_twice_leaves_one_copy(store):
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    items = embedded("a.md", ["alpha text", "beta text", "gamma text"])
    assert write(store, items).written == 3
    assert write(store, items).written == 3
    assert store.count(SourceKind.DOCUMENTS) == 3
    stored = store.stored_documents("src", SourceKind.DOCUMENTS)
    (doc,) = stored.values()
    assert doc.complete and doc.chunk_count == 3
    assert doc.content_hash == items[0].chunk.content_hash


def test_missing_chunk_marks_the_document_incomplete(store):
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    items = embedded("a.md", ["one", "two", "three"])
    write(store, [items[0], items[2]])
    (doc,) = store.stored_documents("src", SourceKind.DOCUMENTS).values()
    assert not doc.complete


def test_failed_objects_are_reported_one_by_one(store):
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    good = embedded("a.md", ["fine"])
    bad_chunk = embedded("b.md", ["wrong dimension"])[0]
    bad = EmbeddedChunk(bad_chunk.chunk, (1.0, 0.0))
    result = write(store, [*good, bad])
    assert result.written == 1
    assert [uuid for uuid, _ in result.failed] == [bad.chunk.uuid]
    assert "2 dimensions" in result.failed[0][1]


def test_delete_documents_and_tail_positions(store):
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    a = embedded("a.md", ["a0", "a1", "a2", "a3"])
    b = embedded("b.md", ["b0"])
    write(store, a + b)
    assert store.delete_positions_from(SourceKind.DOCUMENTS, a[0].chunk.document_id, 2, None) == 2
    stored = store.stored_documents("src", SourceKind.DOCUMENTS)
    assert store.count(SourceKind.DOCUMENTS) == 3
    assert store.delete_documents(SourceKind.DOCUMENTS, [stored[b[0].chunk.document_id]]) == 1
    assert set(store.stored_documents("src", SourceKind.DOCUMENTS)) == {a[0].chunk.document_id}


def test_another_embedding_model_is_refused_instead_of_mixing_vectors(store):
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    with pytest.raises(ConfigError, match="never mixed"):
        store.ensure_schema(SourceKind.DOCUMENTS, "other-model", 768)


def test_customer_records_live_in_their_own_tenant(store):
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    store.ensure_schema(SourceKind.CUSTOMERS, MODEL, DIM)
    write(store, embedded("policy.md", ["refund policy for everyone"]))
    write(store, embedded("a.csv:1", ["refund of order 111 for ann"], SourceKind.CUSTOMERS, "ann"))
    write(store, embedded("a.csv:2", ["refund of order 222 for bob"], SourceKind.CUSTOMERS, "bob"))
    vector = [1.0, 0.0, 0.0, 0.0]
    ann = store.search("refund order", vector, k=10, customer_id="ann")
    assert {h.text for h in ann} == {"refund policy for everyone", "refund of order 111 for ann"}
    anonymous = store.search("refund order", vector, k=10)
    assert {h.kind for h in anonymous} == {SourceKind.DOCUMENTS}
    nobody = store.search("refund order", vector, k=10, customer_id="carol")
    assert all(h.kind is SourceKind.DOCUMENTS for h in nobody)
    records = store.stored_documents("src", SourceKind.CUSTOMERS)
    assert {d.customer_id for d in records.values()} == {"ann", "bob"}
    with pytest.raises(ValueError, match="customer id"):
        store._collection(SourceKind.CUSTOMERS)
