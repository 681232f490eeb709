"""The ingest flow's tasks: each wraps one stage function from loaders/, validation/,
embeddings/, screening/ or store/, takes and returns plain records, and opens its own Weaviate
connection, so a distributed task runner can run it on another machine. Retries are on tasks,
and only for transient errors: a corrupt file or a wrong setting does not get better by
retrying.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from weaviate.exceptions import WeaviateBaseError

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, DataError, TransientError
from freshkb.core.progress import stage_progress
from freshkb.core.records import (
    Chunk,
    EmbeddedChunk,
    ExpectedDocument,
    LoadedDocument,
    LoadResult,
    SourceKind,
    StoredDocument,
    SyncPlan,
)
from freshkb.core.sources import AnySource, SourceConfig
from freshkb.embeddings.cache import open_vector_cache
from freshkb.embeddings.chunking import ChunkingPolicy, chunk_documents
from freshkb.embeddings.embed import EmbedStats, embed_chunks
from freshkb.embeddings.embedder import Embedder, select_embedder, settings_for_index
from freshkb.embeddings.passages import cached_vectors
from freshkb.loaders import loader_for
from freshkb.screening import load_guard
from freshkb.screening.verdict_cache import open_verdict_cache, screen_documents
from freshkb.store.state import settled_count
from freshkb.store.sync import plan_sync
from freshkb.store.weaviate_store import WeaviateStore, WriteResult, open_store
from freshkb.validation.gate import ValidationOutcome, validate_load

log = logging.getLogger(__name__)


def _only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry policy: retry transient errors only."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, TransientError)


TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": _only_transient,
    "cache_policy": NO_CACHE,
}


R = TypeVar("R")


def run_task(stage: Task[..., R], *args: Any) -> R:
    """Run a task of the flow with its arguments quoted.

    Prefect walks every argument of a task call, element by element, looking for futures to
    wait on: 4-5 s per call for a batch of 1,024 chunks and their vectors (measured). The flow
    calls its tasks one after another with plain values, so there is nothing to find; quoting
    skips the walk (the Prefect UI then draws no arrows between the tasks). A plain function
    (the tasks' `.fn`, as bench/stage_bench.py runs them) is called as it is.
    """
    if isinstance(stage, Task):
        return cast(R, cast(Any, stage)(*(quote(arg) for arg in args)))
    return cast(R, cast(Any, stage)(*args))


def run_inline(stage: Task[..., R] | Callable[..., R], *args: Any) -> R:
    """Run a stage's plain function inside the task that calls it: no task run of its own, so
    no Prefect bookkeeping and no walk of its arguments (the batch task's stages)."""
    function = stage.fn if isinstance(stage, Task) else stage
    return cast(R, function(*args))


def batch_runner(settings: Settings) -> TaskRunner[Any]:
    """The task runner of an ingest's batches: a thread pool, or the configured Dask cluster.

    A Dask worker runs Prefect's task engine, so it needs PREFECT_API_URL set to the server the
    flow reports to (else each worker process starts a temporary server of its own), and the
    same freshkb installation (`scripts/setup`) to import the tasks from.
    """
    if settings.ingest_task_runner == "dask":
        if not settings.ingest_dask_address:
            raise ConfigError(
                "ingest_task_runner is dask but ingest_dask_address is not set: set "
                "FRESHKB_INGEST_DASK_ADDRESS to the scheduler (tcp://host:8786), or use threads"
            )
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=settings.ingest_dask_address)
    return ThreadPoolTaskRunner(max_workers=settings.ingest_parallel_batches)


@dataclass(frozen=True)
class ModelInfo:
    """The embedding model a run writes vectors of."""

    model_id: str
    dimension: int
    max_tokens: int


def embedder_for(settings: Settings) -> Embedder:
    """The configured embedding model on the configured backend (loaded once per process)."""
    return select_embedder(
        settings.embedding_model,
        settings.embedding_device,
        settings.embedding_batch_size,
        settings.embedding_backend,
        settings.cache_dir,
    )


def embedding_model(settings: Settings) -> ModelInfo:
    """What a run needs to know of the configured embedding model."""
    embedder = embedder_for(settings)
    return ModelInfo(embedder.model_id, embedder.dimension, embedder.max_tokens)


@contextmanager
def index(
    settings: Settings, kind: SourceKind | None = None, target: str | None = None
) -> Iterator[WeaviateStore]:
    """The store on its own connection; with `target`, `kind` reads and writes that version."""
    with open_store(settings) as store:
        if target is not None and kind is not None:
            store.use_collection(kind, target)
        yield store


@task(name="index-model", **TASK_OPTIONS)
def index_model_task(settings: Settings, kind: SourceKind, target: str | None) -> str | None:
    """The model id of the vectors in the collection a run writes (a rebuild's target, else
    the live one, else the other kind's); None before the first ingest."""
    with index(settings, kind, target) as store:
        return store.vectors_model(kind)


def indexed_settings(settings: Settings, kind: SourceKind, target: str | None) -> Settings:
    """`settings` embedding as the collection a run writes was made: 'auto' follows the index,
    a new one is int8 on a CPU (embeddings/embedder.py backend_for_index)."""
    return settings_for_index(settings, run_task(index_model_task, settings, kind, target))


@task(name="index-state", **TASK_OPTIONS)
def index_state_task(
    settings: Settings, source: SourceConfig, model: ModelInfo, flow_run_id: str, target: str | None
) -> dict[str, StoredDocument]:
    """What the index (the live one, or `target`) holds for this source, per document.

    Also makes sure the live collection exists and was built with the configured model. Read
    once per run: the load uses it to skip unchanged files, the plan to compare against.
    """
    with index(settings, source.kind, target) as store:
        if target is None:
            store.ensure_schema(source.kind, model.model_id, model.dimension, flow_run_id)
        return store.stored_documents(source.name, source.kind)


@task(name="load", **TASK_OPTIONS)
def load_task(
    source: AnySource, indexed: dict[str, str] | None = None, processes: int = 1
) -> LoadResult:
    """Pull every document or record of a source; bad items become failures.

    Files whose bytes hash as in `indexed` come back unparsed (see DocumentFolderLoader); PDF
    and DOCX files are partitioned by `processes` worker processes.
    """
    loader = loader_for(source, indexed, processes)
    loader.precheck()
    with stage_progress(f"load {source.name}") as advance:
        return loader.load(lambda done, total, item: advance(done, total))


@task(name="plan", **TASK_OPTIONS)
def plan_task(
    source: SourceConfig, loaded: LoadResult, stored: dict[str, StoredDocument]
) -> SyncPlan:
    """Compare the load with what the index holds for this source."""
    return plan_sync(source.name, loaded.documents, loaded.failures, stored)


@task(name="validate", **TASK_OPTIONS)
def validate_task(
    settings: Settings, source: AnySource, loaded: LoadResult, flow_run_id: str, allow_empty: bool
) -> ValidationOutcome:
    """Run the source's Great Expectations suites on the load; results saved as JSON."""
    if allow_empty:
        expectations = source.expectations.model_copy(update={"min_documents": 0})
        source = source.model_copy(update={"expectations": expectations})
    return validate_load(
        source, loaded, results_dir=settings.validation_results_dir, run_id=flow_run_id
    )


@task(name="chunk", **TASK_OPTIONS)
def chunk_task(documents: tuple[LoadedDocument, ...], policy: ChunkingPolicy) -> list[Chunk]:
    """Chunk the documents that are new or changed."""
    return chunk_documents(documents, policy)


@task(name="screen", **TASK_OPTIONS)
def screen_task(settings: Settings, chunks: list[Chunk]) -> list[Chunk]:
    """Flag chunks that carry instructions aimed at an AI (indirect prompt injection).

    Flagged chunks are still stored, so search and audits see them, but carry the reason; the
    answer path never puts them in front of the LLM.
    """
    guard = load_guard(cache_dir=settings.cache_dir)  # its own bundled model, any index model
    cache, vectors = open_verdict_cache(settings), open_vector_cache(settings)
    try:
        # Run after the embed stage, the passages' vectors are in the vector cache when the
        # index's model is the detector's (the default): none is embedded twice.
        known = cached_vectors(vectors)
        verdicts = screen_documents(guard, [chunk.text for chunk in chunks], cache, None, known)
    finally:
        cache.close()
        vectors.close()
    return [
        replace(chunk, injection_reason="; ".join(verdict.reasons)[:2000])
        if verdict.flagged
        else chunk
        for chunk, verdict in zip(chunks, verdicts, strict=True)
    ]


@task(name="embed", **TASK_OPTIONS)
def embed_task(settings: Settings, chunks: list[Chunk]) -> tuple[list[EmbeddedChunk], EmbedStats]:
    """Embed chunks in batches; cached vectors are reused."""
    cache = open_vector_cache(settings)
    try:
        with stage_progress("embed") as advance:
            return embed_chunks(chunks, embedder_for(settings), cache, advance)
    finally:
        cache.close()


@dataclass(frozen=True)
class WriteBatch:
    """Documents written together (chunk, screen, embed, upsert), and what the index held of
    the changed ones; small, plain data, so a distributed task runner can ship it."""

    number: int  # from 1, in plan order
    documents: tuple[LoadedDocument, ...]
    previous: Mapping[str, StoredDocument]  # the changed documents of this batch only


def write_batches(plan: SyncPlan, size: int) -> Iterator[WriteBatch]:
    """The plan's new and changed documents in batches of `size`, in plan order."""
    documents = plan.to_write
    for number, start in enumerate(range(0, len(documents), size), 1):
        part = documents[start : start + size]
        held = plan.previous
        previous = {d.document_id: held[d.document_id] for d in part if d.document_id in held}
        yield WriteBatch(number, part, previous)


@task(name="upsert", **TASK_OPTIONS)
def upsert_task(
    settings: Settings,
    source: SourceConfig,
    embedded: list[EmbeddedChunk],
    batch: WriteBatch,
    flow_run_id: str,
    model: ModelInfo,
    target: str | None,
) -> tuple[WriteResult, int]:
    """Write one batch's chunks, then drop the tail chunks of its documents that got shorter."""
    with index(settings, source.kind, target) as store:
        if target is None:
            store.ensure_schema(source.kind, model.model_id, model.dimension, flow_run_id)
        with stage_progress(f"write {source.name}") as advance:
            result = store.upsert(
                embedded,
                ingested_at=datetime.now(UTC),
                flow_run_id=flow_run_id,
                model_id=model.model_id,
                progress=advance,
            )
        new_counts = {item.chunk.document_id: item.chunk.chunk_count for item in embedded}
        trimmed = 0
        for document in batch.documents:
            previous = batch.previous.get(document.document_id)
            now = new_counts.get(document.document_id, 0)
            # After an interrupted write the stored chunks mix two versions, and the count read
            # back may be the shorter one's: trim those whatever it says.
            interrupted = previous is not None and not (previous.complete and previous.content_hash)
            if previous and (previous.chunk_count > now or interrupted):
                trimmed += store.delete_positions_from(
                    source.kind, document.document_id, now, document.customer_id
                )
    return result, trimmed


@task(name="delete", **TASK_OPTIONS)
def delete_task(
    settings: Settings, source: SourceConfig, gone: tuple[StoredDocument, ...], target: str | None
) -> int:
    """Delete the chunks of documents that left the source."""
    if not gone:
        return 0
    with index(settings, source.kind, target) as store:
        return store.delete_documents(source.kind, gone)


@task(name="verify", **TASK_OPTIONS)
def verify_task(
    settings: Settings,
    source: SourceConfig,
    expected: tuple[ExpectedDocument, ...],
    target: str | None,
) -> int:
    """Count the source's objects after the writes; a mismatch fails the run.

    Where copies can lag the writes (more than one node, a replication factor above 1, or a
    Weaviate of the user's own: a collection keeps the copies it was made with, whatever the
    setting says now), the count is read again until it matches or `weaviate_settle_seconds`
    pass; a count still short then is checked object by object at the level that sees every
    acknowledged write, and the run holds if every expected chunk is there.
    """
    total = sum(doc.chunk_count for doc in expected)
    replicated = (
        settings.weaviate_replication_factor > 1
        or settings.weaviate_nodes > 1
        or settings.weaviate_url is not None
    )
    with index(settings, source.kind, target) as store:
        found = settled_count(
            lambda: store.count(source.kind, source.name),
            total,
            within=settings.weaviate_settle_seconds if replicated else 0.0,
        )
        if found < total and replicated:
            try:
                absent = store.missing(source.kind, expected)
            except WeaviateBaseError as exc:
                raise DataError(
                    f"post-write check: {found} of {total} objects of source {source.name!r} "
                    f"counted, and reading them back one by one failed ({exc}); the run is "
                    "marked failed and the next run repairs it"
                ) from exc
            log.warning(
                "post-write check of %s: the copy answering counts holds %d of %d objects; "
                "read one by one where writes are acknowledged, %d are missing",
                source.name,
                found,
                total,
                len(absent),
            )
            found = total - len(absent)
    if found != total:
        raise DataError(
            f"post-write check: {total} objects of source {source.name!r} expected in the "
            f"index, {found} found; the run is marked failed and the next run repairs it"
        )
    return found


def expected_documents(
    plan: SyncPlan, rewritten: Mapping[str, int]
) -> tuple[ExpectedDocument, ...]:
    """The documents the source must hold after the run, with their chunk counts: new counts
    of rewritten documents (document id -> chunks written), stored counts of unchanged ones
    and of those kept after a failed load."""
    customers = {doc.document_id: doc.customer_id for doc in plan.to_write}
    written = [
        ExpectedDocument(doc_id, chunks, customers.get(doc_id))
        for doc_id, chunks in rewritten.items()
    ]
    unchanged = [plan.stored[doc.document_id] for doc in plan.unchanged]
    kept = [
        ExpectedDocument(doc.document_id, doc.chunk_count, doc.customer_id)
        for doc in (*unchanged, *plan.kept_after_failure)
    ]
    return (*written, *kept)
