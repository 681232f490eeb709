"""Typed records that move between the pipeline's steps.

Each step takes and returns batches of these frozen records and keeps no state of its own, so a
distributed Prefect task runner can ship them between machines (they are plain, picklable data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class SourceKind(StrEnum):
    """What a source holds: policy documents, or records that each belong to one customer."""

    DOCUMENTS = "documents"
    CUSTOMERS = "customers"


@dataclass(frozen=True)
class Section:
    """One partitioned element of a document: its text, page and the title it sits under."""

    text: str
    category: str = "NarrativeText"
    page: int | None = None
    title: str | None = None


@dataclass(frozen=True)
class LoadedDocument:
    """A document or customer record as pulled from its source, before chunking."""

    source: str
    kind: SourceKind
    document_id: str
    key: str  # path relative to the source folder, or "file:primary-key" for a record
    title: str
    content_hash: str
    modified_at: datetime
    sections: tuple[Section, ...]
    customer_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """All section texts joined, as the document reads."""
        return "\n\n".join(section.text for section in self.sections)


@dataclass(frozen=True)
class LoadFailure:
    """A file or record that could not be loaded, with the reason and the fix when known."""

    source: str
    item: str
    reason: str
    # A record that failed (no customer id, duplicate key) keeps its fields, so validation
    # still sees every record that was pulled, not only the ones that loaded.
    record: dict[str, Any] | None = None
    unsupported: bool = False  # a file type the source does not read: reported, not gated


@dataclass(frozen=True)
class LoadResult:
    """What a loader returns: the documents it could read and the items it could not."""

    documents: tuple[LoadedDocument, ...]
    failures: tuple[LoadFailure, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A piece of a document sized for the embedding model, with where it came from."""

    uuid: str
    document_id: str
    position: int
    chunk_count: int
    text: str
    chunk_hash: str
    source: str
    kind: SourceKind
    key: str
    title: str
    section_title: str | None
    page: int | None
    content_hash: str  # of the whole document: equal hashes mean the document is unchanged
    modified_at: datetime
    customer_id: str | None = None
    injection_reason: str = ""  # why the chunk reads as instructions to an AI; "" when clean
    document_names: str = ""  # first chunk: the document's names (core/document_names.py)


@dataclass(frozen=True)
class EmbeddedChunk:
    """A chunk together with its vector, and its passages' vectors (embeddings/passages.py:
    base64 float16 rows; "" for none)."""

    chunk: Chunk
    vector: tuple[float, ...]
    passages: str = ""


@dataclass(frozen=True)
class StoredDocument:
    """What the store holds of one document: enough to tell if a reload changed it."""

    document_id: str
    content_hash: str  # "" when chunks of two versions are mixed (an interrupted write)
    chunk_count: int
    complete: bool  # every position 0..chunk_count-1 present (a killed run leaves gaps)
    customer_id: str | None = None
    key: str = ""  # as the loader minted it: path, "file:primary-key" or "file#article"


@dataclass(frozen=True)
class ExpectedDocument:
    """A document the index must hold after a run: chunks at positions 0..chunk_count-1."""

    document_id: str
    chunk_count: int
    customer_id: str | None = None


@dataclass(frozen=True)
class SyncPlan:
    """Documents sorted by what happens to them."""

    new: tuple[LoadedDocument, ...]
    changed: tuple[LoadedDocument, ...]
    unchanged: tuple[LoadedDocument, ...]
    deleted: tuple[StoredDocument, ...]
    kept_after_failure: tuple[StoredDocument, ...]
    previous: Mapping[str, StoredDocument]  # what the store holds of each changed document
    stored: Mapping[str, StoredDocument]  # everything the store held of the source

    @property
    def to_write(self) -> tuple[LoadedDocument, ...]:
        """Documents whose chunks are (re)written."""
        return self.new + self.changed
