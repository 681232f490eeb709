"""What the flows and the answer service ask of an index, whatever holds it.

Three small contracts, as Haystack declares a document store (`document_stores/types/
protocol.py`): the ingest flow writes through `IndexWriter`, the answer service reads through
`IndexReader`, and a rebuild moves between versions through `IndexVersions`. WeaviateStore
implements all three; tests/store_contract.py runs one suite against every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from freshkb.core.records import EmbeddedChunk, ExpectedDocument, SourceKind, StoredDocument


@dataclass(frozen=True)
class WriteResult:
    """Objects written and every object that failed, with the store's message."""

    written: int
    failed: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk or record, with where it came from."""

    uuid: str
    text: str
    source: str
    document_id: str
    document_key: str
    title: str
    section_title: str | None
    page: int | None
    score: float
    kind: SourceKind
    customer_id: str | None
    ingested_at: datetime | None
    flow_run_id: str | None
    relevance: float | None = None  # cosine of the hit's vector with the query's
    injection_reason: str = ""  # set at ingestion when the chunk reads as instructions to an AI


@dataclass(frozen=True)
class IndexVersion:
    """One physical collection behind an alias: what built it and whether it served."""

    name: str
    kind: SourceKind
    number: int
    model_id: str | None
    dimension: int | None
    created_at: str | None
    flow_run_id: str | None
    promoted_at: str | None  # first time the alias pointed at it: it was complete
    retired_at: str | None  # last time the alias moved away from it
    rolled_back_at: str | None  # rolled back from: never a rollback target again
    failed_at: str | None  # a rebuild that did not complete; dropped by the next rebuild
    live: bool
    objects: int

    @property
    def complete(self) -> bool:
        """True if this version was ever promoted (filled and checked completely)."""
        return self.promoted_at is not None


@runtime_checkable
class IndexWriter(Protocol):
    """What an ingest run calls: make the schema, compare, write, delete, verify."""

    def ensure_schema(
        self, kind: SourceKind, model_id: str, dimension: int, flow_run_id: str = "local"
    ) -> str:
        """The live collection of `kind` (created if none), refusing another embedding model."""
        ...

    def use_collection(self, kind: SourceKind, name: str) -> None:
        """Write to and read from version `name` of `kind` (a rebuild in progress)."""
        ...

    def stored_documents(self, source: str, kind: SourceKind) -> dict[str, StoredDocument]:
        """Per document of `source`: its content hash, expected and present chunk counts."""
        ...

    def upsert(
        self,
        embedded: Sequence[EmbeddedChunk],
        *,
        ingested_at: datetime,
        flow_run_id: str,
        model_id: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> WriteResult:
        """Write chunks with their vectors; a chunk written again overwrites its copy."""
        ...

    def delete_documents(self, kind: SourceKind, documents: Iterable[StoredDocument]) -> int:
        """Delete every chunk of these documents; returns objects deleted."""
        ...

    def delete_positions_from(
        self, kind: SourceKind, document_id: str, first_gone: int, customer_id: str | None
    ) -> int:
        """Delete a document's chunks at positions >= first_gone (it got shorter)."""
        ...

    def count(self, kind: SourceKind, source: str | None = None) -> int:
        """Objects of a kind (optionally of one source) in the collection in use."""
        ...

    def missing(self, kind: SourceKind, expected: Sequence[ExpectedDocument]) -> list[str]:
        """UUIDs of the expected chunks absent from the copies that acknowledge writes."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@runtime_checkable
class IndexReader(Protocol):
    """What the answer service calls: search, and whether the index answers at all."""

    def search(
        self,
        query: str,
        vector: Sequence[float],
        *,
        k: int = 5,
        customer_id: str | None = None,
        alpha: float = 0.5,
        sources: Sequence[str] | None = None,
    ) -> list[SearchHit]:
        """Hybrid search over policy chunks and, given a customer, only that customer's records."""
        ...

    def unknown_terms(
        self,
        terms: Sequence[str],
        *,
        customer_id: str | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[str]:
        """The terms that no policy chunk of `sources`, nor the customer's records, contains."""
        ...

    def is_ready(self) -> bool:
        """True when the index answers."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@runtime_checkable
class IndexVersions(Protocol):
    """What a rebuild, a rollback and `freshkb versions` call."""

    def create_version(
        self, kind: SourceKind, model_id: str, dimension: int, flow_run_id: str
    ) -> str:
        """Create the next, empty version of `kind` (not yet live); its name."""
        ...

    def promote(self, kind: SourceKind, name: str) -> str | None:
        """Make version `name` the one answers read; the previous one's name."""
        ...

    def rollback(self, kind: SourceKind) -> tuple[str, IndexVersion]:
        """Go back to the most recently promoted earlier version; (from, to)."""
        ...

    def versions(
        self, kind: SourceKind | None = None, count_objects: bool = True
    ) -> list[IndexVersion]:
        """Every version (of one kind, or all), oldest first."""
        ...

    def mark_failed(self, name: str) -> None:
        """Mark a version whose rebuild did not complete; it is never promoted."""
        ...

    def drop_failed_versions(self, kind: SourceKind) -> list[str]:
        """Delete the versions of `kind` left by failed rebuilds; their names."""
        ...
