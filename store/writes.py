"""Writes and deletes, idempotent: an object's UUID is uuid5(document id, position), so writing
a chunk again overwrites it instead of duplicating it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter
from weaviate.collections import Collection
from weaviate.exceptions import WeaviateBaseError

from freshkb.core.errors import TransientError
from freshkb.core.records import EmbeddedChunk, SourceKind, StoredDocument
from freshkb.store.collections import LiveCollections
from freshkb.store.protocol import WriteResult

WRITE_BATCH = 200
_DELETE_BATCH = 500


def upsert(
    live: LiveCollections,
    embedded: Sequence[EmbeddedChunk],
    *,
    ingested_at: datetime,
    flow_run_id: str,
    model_id: str,
    progress: Callable[[int, int], None] | None = None,
) -> WriteResult:
    """Write chunks with their vectors (gRPC batches); existing UUIDs are overwritten."""
    groups: dict[tuple[SourceKind, str | None], list[EmbeddedChunk]] = defaultdict(list)
    for item in embedded:
        groups[(item.chunk.kind, item.chunk.customer_id)].append(item)
    customers = {cid for (kind, cid) in groups if kind is SourceKind.CUSTOMERS and cid}
    if customers:
        live.ensure_tenants(customers)
    written = done = 0
    failed: list[tuple[str, str]] = []
    for (kind, customer_id), group in groups.items():
        collection = live.writer(kind, customer_id)
        items = _check_dimensions(group, live.dimension.get(kind), failed)
        for start in range(0, len(items), WRITE_BATCH):
            batch = items[start : start + WRITE_BATCH]
            written += _insert(collection, batch, failed, ingested_at, flow_run_id, model_id)
            done += len(batch)
            if progress:
                progress(done, len(embedded))
    return WriteResult(written=written, failed=tuple(failed))


def _check_dimensions(
    group: list[EmbeddedChunk], expected: int | None, failed: list[tuple[str, str]]
) -> list[EmbeddedChunk]:
    """The items whose vectors fit the collection; the others go to `failed` by name.

    Weaviate fixes a collection's dimension from its first vector and would reject or, worse,
    race on others; checking here reports each bad object by its UUID.
    """
    fitting = []
    for item in group:
        if expected is not None and len(item.vector) != expected:
            reason = f"vector has {len(item.vector)} dimensions, the collection holds {expected}"
            failed.append((item.chunk.uuid, reason))
        else:
            fitting.append(item)
    return fitting


def _insert(
    collection: Collection,
    batch: list[EmbeddedChunk],
    failed: list[tuple[str, str]],
    ingested_at: datetime,
    flow_run_id: str,
    model_id: str,
) -> int:
    """Insert one batch; returns objects written, adds the refused ones to `failed`."""
    objects = [
        DataObject(
            properties=object_properties(item, ingested_at, flow_run_id, model_id),
            uuid=item.chunk.uuid,
            vector=list(item.vector),
        )
        for item in batch
    ]
    try:
        result = collection.data.insert_many(objects)
    except WeaviateBaseError as exc:
        raise TransientError(f"Weaviate batch write failed: {exc}") from exc
    for index, error in result.errors.items():
        failed.append((batch[index].chunk.uuid, error.message))
    return len(batch) - len(result.errors)


def delete_documents(
    live: LiveCollections, kind: SourceKind, documents: Iterable[StoredDocument]
) -> int:
    """Delete every chunk of these documents; returns objects deleted."""
    by_tenant: dict[str | None, list[str]] = defaultdict(list)
    for doc in documents:
        by_tenant[doc.customer_id if kind is SourceKind.CUSTOMERS else None].append(doc.document_id)
    deleted = 0
    for customer_id, doc_ids in by_tenant.items():
        collection = live.writer(kind, customer_id)
        for start in range(0, len(doc_ids), _DELETE_BATCH):
            part = doc_ids[start : start + _DELETE_BATCH]
            result = collection.data.delete_many(
                where=Filter.by_property("document_id").contains_any(part)
            )
            deleted += int(result.successful)
    return deleted


def delete_positions_from(
    live: LiveCollections,
    kind: SourceKind,
    document_id: str,
    first_gone: int,
    customer_id: str | None,
) -> int:
    """Delete a document's chunks at positions >= first_gone (it got shorter)."""
    result = live.writer(kind, customer_id).data.delete_many(
        where=Filter.by_property("document_id").equal(document_id)
        & Filter.by_property("position").greater_or_equal(first_gone)
    )
    return int(result.successful)


def object_properties(
    item: EmbeddedChunk, ingested_at: datetime, flow_run_id: str, model_id: str
) -> dict[str, Any]:
    """The properties of one chunk's object (see schema.collection_properties)."""
    chunk = item.chunk
    props: dict[str, Any] = {
        "text": chunk.text,
        "title": chunk.title,
        "section_title": chunk.section_title or "",
        "source": chunk.source,
        "document_id": chunk.document_id,
        "document_key": chunk.key,
        "content_hash": chunk.content_hash,
        "chunk_hash": chunk.chunk_hash,
        "position": chunk.position,
        "chunk_count": chunk.chunk_count,
        "page": chunk.page,
        "modified_at": chunk.modified_at,
        "ingested_at": ingested_at,
        "flow_run_id": flow_run_id,
        "model_id": model_id,
        "injection_reason": chunk.injection_reason,
        "document_names": chunk.document_names,
    }
    if item.passages:
        props["passage_vectors"] = item.passages
    if chunk.kind is SourceKind.CUSTOMERS:
        props["customer_id"] = chunk.customer_id
    return props
