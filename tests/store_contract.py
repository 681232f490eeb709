"""The store contract: one suite of tests every implementation of store/protocol.py passes.

As Haystack's `haystack/testing/document_store.py` does for document stores: small test classes,
one per part of the contract, each using an `index` fixture it does not define. A test module
subclasses `IndexContract` and provides `index` (an empty store of its implementation), e.g.

    class TestWeaviateIndex(IndexContract):
        @pytest.fixture
        def index(self, store):
            return store
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from freshkb.core import ids
from freshkb.core.errors import ConfigError
from freshkb.core.records import Chunk, EmbeddedChunk, ExpectedDocument, SourceKind
from freshkb.store.protocol import IndexReader, IndexVersions, IndexWriter, WriteResult

DIM = 4
MODEL = "test-model"


def embedded(
    key: str,
    texts: list[str],
    kind: SourceKind = SourceKind.DOCUMENTS,
    customer_id: str | None = None,
    version: str = "v1",
    source: str = "src",
) -> list[EmbeddedChunk]:
    """Chunks of one document with simple, distinct vectors."""
    doc_id = ids.document_id(source, key)
    items = []
    for position, text in enumerate(texts):
        chunk = Chunk(
            uuid=ids.chunk_uuid(doc_id, position),
            document_id=doc_id,
            position=position,
            chunk_count=len(texts),
            text=text,
            chunk_hash=ids.content_hash(text),
            source=source,
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


def write(index: IndexWriter, items: list[EmbeddedChunk]) -> WriteResult:
    """Upsert with fixed run metadata."""
    return index.upsert(items, ingested_at=datetime.now(UTC), flow_run_id="run-1", model_id=MODEL)


class ContractBase:
    """The fixture every part of the contract uses; an implementation's test class provides it."""

    @pytest.fixture
    def index(self) -> Any:
        """An empty store (no collections) of the implementation under test."""
        raise NotImplementedError("a contract test class must provide the `index` fixture")


class ProtocolContract(ContractBase):
    """The implementation declares the three contracts."""

    def test_store_implements_writer_reader_and_versions(self, index: Any) -> None:
        assert isinstance(index, IndexWriter)
        assert isinstance(index, IndexReader)
        assert isinstance(index, IndexVersions)
        assert index.is_ready()


class WriteContract(ContractBase):
    """Writes are idempotent and report every object they could not write."""

    def test_upsert_then_count_counts_every_chunk(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        assert index.count(SourceKind.DOCUMENTS) == 0
        write(index, embedded("a.md", ["one", "two"]))
        write(index, embedded("b.md", ["three"], source="other"))
        assert index.count(SourceKind.DOCUMENTS) == 3
        assert index.count(SourceKind.DOCUMENTS, source="other") == 1

    def test_writing_the_same_chunks_twice_leaves_one_copy(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        items = embedded("a.md", ["alpha text", "beta text", "gamma text"])
        assert write(index, items).written == 3
        assert write(index, items).written == 3
        assert index.count(SourceKind.DOCUMENTS) == 3
        stored = index.stored_documents("src", SourceKind.DOCUMENTS)
        (doc,) = stored.values()
        assert doc.complete and doc.chunk_count == 3
        assert doc.content_hash == items[0].chunk.content_hash

    def test_failed_objects_are_reported_one_by_one(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        good = embedded("a.md", ["fine"])
        bad_chunk = embedded("b.md", ["wrong dimension"])[0]
        bad = EmbeddedChunk(bad_chunk.chunk, (1.0, 0.0))
        result = write(index, [*good, bad])
        assert result.written == 1
        assert [uuid for uuid, _ in result.failed] == [bad.chunk.uuid]
        assert "2 dimensions" in result.failed[0][1]

    def test_another_embedding_model_is_refused_instead_of_mixing_vectors(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        with pytest.raises(ConfigError, match="never mixed"):
            index.ensure_schema(SourceKind.DOCUMENTS, "other-model", 768)


class StateContract(ContractBase):
    """What the index reports of a source is what the sync plan needs to compare."""

    def test_an_index_without_collections_holds_nothing(self, index: Any) -> None:
        assert index.stored_documents("src", SourceKind.DOCUMENTS) == {}
        assert index.count(SourceKind.DOCUMENTS) == 0
        assert index.search("anything", [1.0, 0.0, 0.0, 0.0]) == []

    def test_missing_chunk_marks_the_document_incomplete(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        items = embedded("a.md", ["one", "two", "three"])
        write(index, [items[0], items[2]])
        (doc,) = index.stored_documents("src", SourceKind.DOCUMENTS).values()
        assert not doc.complete

    def test_stored_documents_reports_only_the_asked_source(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        mine = embedded("a.md", ["mine"])
        write(index, mine + embedded("a.md", ["theirs"], source="other"))
        assert set(index.stored_documents("src", SourceKind.DOCUMENTS)) == {
            mine[0].chunk.document_id
        }

    def test_missing_names_each_expected_chunk_the_index_lacks(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        index.ensure_schema(SourceKind.CUSTOMERS, MODEL, DIM)
        items = embedded("a.md", ["one", "two", "three"])
        write(index, [items[0], items[2]])
        ann = embedded("a.csv:1", ["ann's order"], SourceKind.CUSTOMERS, "ann")
        write(index, ann)
        doc_id = items[0].chunk.document_id
        assert index.missing(SourceKind.DOCUMENTS, [ExpectedDocument(doc_id, 4)]) == [
            items[1].chunk.uuid,
            ids.chunk_uuid(doc_id, 3),
        ]
        ann_doc = ann[0].chunk.document_id
        assert index.missing(SourceKind.CUSTOMERS, [ExpectedDocument(ann_doc, 1, "ann")]) == []
        # another customer's tenant does not hold ann's record
        bob_view = [ExpectedDocument(ann_doc, 1, "bob")]
        write(index, embedded("a.csv:2", ["bob's order"], SourceKind.CUSTOMERS, "bob"))
        assert index.missing(SourceKind.CUSTOMERS, bob_view) == [ann[0].chunk.uuid]


class DeleteContract(ContractBase):
    """Deletes remove whole documents, or the tail of a document that got shorter."""

    def test_delete_documents_and_tail_positions(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        a = embedded("a.md", ["a0", "a1", "a2", "a3"])
        b = embedded("b.md", ["b0"])
        write(index, a + b)
        doc_a = a[0].chunk.document_id
        assert index.delete_positions_from(SourceKind.DOCUMENTS, doc_a, 2, None) == 2
        stored = index.stored_documents("src", SourceKind.DOCUMENTS)
        assert index.count(SourceKind.DOCUMENTS) == 3
        assert index.delete_documents(SourceKind.DOCUMENTS, [stored[b[0].chunk.document_id]]) == 1
        assert set(index.stored_documents("src", SourceKind.DOCUMENTS)) == {doc_a}


class TenantContract(ContractBase):
    """A customer's records are reachable only with that customer's id."""

    def test_customer_records_live_in_their_own_tenant(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        index.ensure_schema(SourceKind.CUSTOMERS, MODEL, DIM)
        write(index, embedded("policy.md", ["refund policy for everyone"]))
        ann = embedded("a.csv:1", ["refund of order 111 for ann"], SourceKind.CUSTOMERS, "ann")
        bob = embedded("a.csv:2", ["refund of order 222 for bob"], SourceKind.CUSTOMERS, "bob")
        write(index, ann)
        write(index, bob)
        vector = [1.0, 0.0, 0.0, 0.0]
        found = index.search("refund order", vector, k=10, customer_id="ann")
        assert {h.text for h in found} == {
            "refund policy for everyone",
            "refund of order 111 for ann",
        }
        anonymous = index.search("refund order", vector, k=10)
        assert {h.kind for h in anonymous} == {SourceKind.DOCUMENTS}
        nobody = index.search("refund order", vector, k=10, customer_id="carol")
        assert all(h.kind is SourceKind.DOCUMENTS for h in nobody)
        records = index.stored_documents("src", SourceKind.CUSTOMERS)
        assert {d.customer_id for d in records.values()} == {"ann", "bob"}
        assert index.count(SourceKind.CUSTOMERS) == 2

    def test_deleting_a_customers_record_leaves_the_others(self, index: Any) -> None:
        index.ensure_schema(SourceKind.CUSTOMERS, MODEL, DIM)
        write(index, embedded("a.csv:1", ["ann's order"], SourceKind.CUSTOMERS, "ann"))
        write(index, embedded("a.csv:2", ["bob's order"], SourceKind.CUSTOMERS, "bob"))
        records = index.stored_documents("src", SourceKind.CUSTOMERS)
        ann = [d for d in records.values() if d.customer_id == "ann"]
        assert index.delete_documents(SourceKind.CUSTOMERS, ann) == 1
        remaining = index.stored_documents("src", SourceKind.CUSTOMERS).values()
        assert {d.customer_id for d in remaining} == {"bob"}


class SearchContract(ContractBase):
    """Hybrid search finds a known passage, cites where it came from, honours source filters."""

    def test_hybrid_search_finds_a_known_passage_with_its_origin(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        items = embedded("returns.md", ["refunds are paid within 14 days", "shipping is free"])
        write(index, items)
        hits = index.search("refunds paid", list(items[0].vector), k=1)
        (hit,) = hits
        assert hit.text == "refunds are paid within 14 days"
        assert hit.uuid == items[0].chunk.uuid
        assert (hit.source, hit.document_key, hit.page) == ("src", "returns.md", 1)
        assert hit.relevance == pytest.approx(1.0)
        assert hit.flow_run_id == "run-1"

    def test_search_reads_only_the_given_sources(self, index: Any) -> None:
        index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        write(index, embedded("a.md", ["refund rules"]))
        write(index, embedded("b.md", ["refund rules too"], source="other"))
        vector = [1.0, 0.0, 0.0, 0.0]
        assert {h.source for h in index.search("refund", vector, k=10)} == {"src", "other"}
        only = index.search("refund", vector, k=10, sources=["other"])
        assert {h.source for h in only} == {"other"}
        assert index.search("refund", vector, k=10, sources=[]) == []


class VersionContract(ContractBase):
    """A new version serves only once promoted; a rollback goes back and never toggles."""

    def test_promoted_version_serves_and_rollback_restores_the_previous(self, index: Any) -> None:
        first = index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        write(index, embedded("a.md", ["old answer"]))
        second = index.create_version(SourceKind.DOCUMENTS, "model-2", DIM, "run-2")
        assert second != first
        versions = {v.name: v for v in index.versions(SourceKind.DOCUMENTS)}
        assert versions[first].live and versions[first].complete and versions[first].objects == 1
        assert not versions[second].live and not versions[second].complete
        assert versions[second].model_id == "model-2" and versions[second].flow_run_id == "run-2"

        assert index.promote(SourceKind.DOCUMENTS, second) == first
        assert index.count(SourceKind.DOCUMENTS) == 0, "answers read the new, empty version"
        came_from, restored = index.rollback(SourceKind.DOCUMENTS)
        assert (came_from, restored.name) == (second, first)
        assert index.count(SourceKind.DOCUMENTS) == 1
        assert restored.retired_at is not None
        with pytest.raises(ConfigError, match="only complete"):
            index.rollback(SourceKind.DOCUMENTS)

    def test_failed_version_is_marked_and_dropped_by_the_next_rebuild(self, index: Any) -> None:
        live = index.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
        building = index.create_version(SourceKind.DOCUMENTS, MODEL, DIM, "run-2")
        index.mark_failed(building)
        (failed,) = [v for v in index.versions(SourceKind.DOCUMENTS) if v.name == building]
        assert failed.failed_at and not failed.complete and not failed.live
        assert index.drop_failed_versions(SourceKind.DOCUMENTS) == [building]
        assert [v.name for v in index.versions(SourceKind.DOCUMENTS)] == [live]


class IndexContract(
    ProtocolContract,
    WriteContract,
    StateContract,
    DeleteContract,
    TenantContract,
    SearchContract,
    VersionContract,
):
    """Every part of the store contract; subclass it and provide `index`."""
