"""What an ingest must write and delete: loaded documents compared with what the store holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from freshkb.core import ids
from freshkb.core.records import LoadedDocument, LoadFailure, StoredDocument, SyncPlan


def plan_sync(
    source: str,
    loaded: Iterable[LoadedDocument],
    failures: Iterable[LoadFailure],
    stored: Mapping[str, StoredDocument],
) -> SyncPlan:
    """Compare a fresh load with the store.

    A document is unchanged only if its content hash matches and all its chunks are present:
    an interrupted earlier run leaves gaps or mixed hashes, and those documents are rewritten.
    A stored document that failed to load this time is kept, not deleted: a corrupt upload must
    not erase the last good version (its failure is in the report).
    """
    new: list[LoadedDocument] = []
    changed: list[LoadedDocument] = []
    unchanged: list[LoadedDocument] = []
    loaded_ids: set[str] = set()
    for document in loaded:
        loaded_ids.add(document.document_id)
        previous = stored.get(document.document_id)
        if previous is None:
            new.append(document)
        elif previous.content_hash == document.content_hash and previous.complete:
            unchanged.append(document)
        else:
            changed.append(document)
    failed_ids = {ids.document_id(source, failure.item) for failure in failures}
    gone = [doc for doc_id, doc in stored.items() if doc_id not in loaded_ids]
    return SyncPlan(
        new=tuple(new),
        changed=tuple(changed),
        unchanged=tuple(unchanged),
        deleted=tuple(doc for doc in gone if doc.document_id not in failed_ids),
        kept_after_failure=tuple(doc for doc in gone if doc.document_id in failed_ids),
        previous={doc.document_id: stored[doc.document_id] for doc in changed},
        stored=dict(stored),
    )
