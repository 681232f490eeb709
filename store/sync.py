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
    A stored document whose file failed to load this time is kept, not deleted: a corrupt upload
    must not erase the last good version (its failure is in the report). That holds for every
    record of a customer file and every article of a JSON article array that fails as a whole;
    a record that fails on its own inside a good file is gone from the source and deleted.
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
    gone = [doc for doc_id, doc in stored.items() if doc_id not in loaded_ids]
    kept = _kept_after_failure(source, gone, failures)
    return SyncPlan(
        new=tuple(new),
        changed=tuple(changed),
        unchanged=tuple(unchanged),
        deleted=tuple(doc for doc in gone if doc.document_id not in kept),
        kept_after_failure=tuple(doc for doc in gone if doc.document_id in kept),
        previous={doc.document_id: stored[doc.document_id] for doc in changed},
        stored=dict(stored),
    )


def _kept_after_failure(
    source: str, gone: list[StoredDocument], failures: Iterable[LoadFailure]
) -> set[str]:
    """Ids of the stored documents that came from a file that failed to load as a whole."""
    failed_files = [failure.item for failure in failures if failure.record is None]
    failed_ids = {ids.document_id(source, item) for item in failed_files}
    return {
        doc.document_id
        for doc in gone
        if doc.document_id in failed_ids or any(ids.comes_from(doc.key, f) for f in failed_files)
    }
