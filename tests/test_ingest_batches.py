"""How an ingest splits its writes into batches (the flow's streaming half, issue 13)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from freshkb.core import ids
from freshkb.core.config import Settings
from freshkb.core.records import (
    ExpectedDocument,
    LoadedDocument,
    Section,
    SourceKind,
    StoredDocument,
)
from freshkb.flows.tasks import expected_documents, write_batches
from freshkb.store.sync import plan_sync


def _doc(key: str, text: str) -> LoadedDocument:
    return LoadedDocument(
        source="kb",
        kind=SourceKind.DOCUMENTS,
        document_id=ids.document_id("kb", key),
        key=key,
        title=key,
        content_hash=ids.content_hash(text),
        modified_at=datetime(2026, 1, 1, tzinfo=UTC),
        sections=(Section(text),),
    )


def _stored(document: LoadedDocument, chunks: int, content_hash: str = "old") -> StoredDocument:
    return StoredDocument(document.document_id, content_hash, chunks, True, key=document.key)


@pytest.mark.timeout(10)
def test_write_batches_cover_new_and_changed_documents_in_order_with_their_previous_state():
    new = [_doc(f"new-{n}.md", f"new {n}") for n in range(3)]
    changed = [_doc(f"changed-{n}.md", f"changed {n}") for n in range(2)]
    same = _doc("same.md", "same")
    gone = _stored(_doc("gone.md", "gone"), 4)
    stored = {d.document_id: _stored(d, 2) for d in changed}
    stored |= {same.document_id: _stored(same, 3, same.content_hash)}
    stored |= {gone.document_id: gone}
    plan = plan_sync("kb", [*new, *changed, same], [], stored)

    batches = list(write_batches(plan, 2))

    assert [b.number for b in batches] == [1, 2, 3]
    assert [[d.key for d in b.documents] for b in batches] == [
        ["new-0.md", "new-1.md"],
        ["new-2.md", "changed-0.md"],
        ["changed-1.md"],
    ]
    # Only a changed document carries what the index held (its tail may need trimming).
    assert [sorted(b.previous) for b in batches] == [
        [],
        [changed[0].document_id],
        [changed[1].document_id],
    ]
    assert batches[1].previous[changed[0].document_id].chunk_count == 2
    assert [b.documents for b in write_batches(plan, 100)] == [plan.to_write]
    # rewritten documents count with their new chunks, the unchanged one with its stored 3
    # chunks, the deleted one not at all
    rewritten = {d.document_id: 1 for d in plan.to_write}
    expected = expected_documents(plan, rewritten)
    assert sorted(expected, key=lambda doc: doc.document_id) == sorted(
        [ExpectedDocument(d.document_id, 1) for d in plan.to_write]
        + [ExpectedDocument(same.document_id, 3)],
        key=lambda doc: doc.document_id,
    )
    assert sum(doc.chunk_count for doc in expected) == 5 + 3


@pytest.mark.timeout(10)
def test_nothing_to_write_makes_no_batch():
    same = _doc("same.md", "same")
    stored = {same.document_id: _stored(same, 3, same.content_hash)}
    assert list(write_batches(plan_sync("kb", [same], [], stored), 8)) == []


@pytest.mark.timeout(10)
def test_batch_size_and_partition_processes_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FRESHKB_INGEST_BATCH_DOCUMENTS", "7")
    monkeypatch.setenv("FRESHKB_PARTITION_PROCESSES", "3")
    settings = Settings()
    assert (settings.ingest_batch_documents, settings.partition_processes) == (7, 3)
    monkeypatch.setenv("FRESHKB_INGEST_BATCH_DOCUMENTS", "0")
    with pytest.raises(ValueError, match="ingest_batch_documents"):
        Settings()


@pytest.mark.timeout(30)
def test_batches_run_on_threads_by_default_or_on_the_configured_dask_scheduler():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from freshkb.flows.tasks import batch_runner

    threads = batch_runner(Settings(ingest_parallel_batches=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    dask = batch_runner(Settings(ingest_task_runner="dask", ingest_dask_address="tcp://h:8786"))
    assert isinstance(dask, DaskTaskRunner) and dask.address == "tcp://h:8786"


@pytest.mark.timeout(30)
def test_a_batch_is_handed_to_threads_quoted_and_to_dask_as_it_is():
    """Quoted, Prefect does not walk a batch's documents looking for futures; Dask unpacks a
    quote (a namedtuple) into a bare tuple, so it gets the plain values."""
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.utilities.annotations import quote
    from prefect_dask import DaskTaskRunner

    from freshkb.core.sources import parse_source
    from freshkb.embeddings.chunking import ChunkingPolicy
    from freshkb.flows.ingest import IngestRun, batch_parameters
    from freshkb.flows.tasks import ModelInfo

    doc = _doc("a.md", "a")
    batch = next(write_batches(plan_sync("kb", [doc], [], {}), 8))
    source = parse_source({"name": "kb", "kind": "documents", "location": ".", "owner": "t"})
    run = IngestRun(Settings(), source, "run")
    model, policy = ModelInfo("m", 384, 256), ChunkingPolicy.for_window(256, 1000)
    quoted = batch_parameters(ThreadPoolTaskRunner(), run, model, policy, batch)
    assert all(isinstance(value, quote) for value in quoted.values())
    assert quoted["batch"].unquote() is batch
    plain = batch_parameters(DaskTaskRunner(address="tcp://h:1"), run, model, policy, batch)
    assert plain == {"run": run, "model": model, "policy": policy, "batch": batch}
