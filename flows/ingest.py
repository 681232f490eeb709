"""Prefect flows: ingest one source (load -> chunk -> embed -> upsert), or all of them.

The flow only orchestrates. Each task wraps one stage function from loaders/, embeddings/ or
store/, takes and returns plain records, and opens its own Weaviate connection, so a
distributed task runner could run it on another machine. Retries are on tasks, and only for
transient errors: a corrupt file or a wrong setting does not get better by retrying.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from embeddings.cache import VectorCache
from embeddings.chunking import ChunkingPolicy, chunk_documents
from embeddings.embed import EmbedStats, embed_chunks
from embeddings.embedder import get_embedder
from freshkb.config import Settings, SourceConfig, get_source, load_sources
from freshkb.errors import FreshkbError, TransientError
from freshkb.progress import stage_progress
from freshkb.records import Chunk, EmbeddedChunk, LoadedDocument, LoadResult, StoredDocument
from freshkb.report import RunReport
from loaders import loader_for
from store.sync import SyncPlan, plan_sync
from store.weaviate_store import WeaviateStore, WriteResult, connect


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


@contextmanager
def _store(settings: Settings) -> Iterator[WeaviateStore]:
    client = connect(settings)
    try:
        yield WeaviateStore(client)
    finally:
        client.close()


@task(name="load", **TASK_OPTIONS)
def load_task(source: SourceConfig) -> LoadResult:
    """Pull every document or record of a source; bad items become failures."""
    loader = loader_for(source)
    loader.precheck()
    with stage_progress(f"load {source.name}") as advance:
        return loader.load(lambda done, total, item: advance(done, total))


@task(name="plan", **TASK_OPTIONS)
def plan_task(settings: Settings, source: SourceConfig, loaded: LoadResult) -> SyncPlan:
    """Compare the load with what the live index holds for this source."""
    with _store(settings) as store:
        stored = store.stored_documents(source.name, source.kind)
    return plan_sync(source.name, loaded.documents, loaded.failures, stored)


@task(name="chunk", **TASK_OPTIONS)
def chunk_task(documents: tuple[LoadedDocument, ...], policy: ChunkingPolicy) -> list[Chunk]:
    """Chunk the documents that are new or changed."""
    return chunk_documents(documents, policy)


@task(name="embed", **TASK_OPTIONS)
def embed_task(settings: Settings, chunks: list[Chunk]) -> tuple[list[EmbeddedChunk], EmbedStats]:
    """Embed chunks in batches; cached vectors are reused."""
    embedder = get_embedder(
        settings.embedding_model, settings.embedding_device, settings.embedding_batch_size
    )
    cache = VectorCache(settings.embedding_cache_path)
    try:
        with stage_progress("embed") as advance:
            return embed_chunks(chunks, embedder, cache, advance)
    finally:
        cache.close()


@task(name="upsert", **TASK_OPTIONS)
def upsert_task(
    settings: Settings,
    source: SourceConfig,
    embedded: list[EmbeddedChunk],
    plan: SyncPlan,
    flow_run_id: str,
    model_id: str,
    dimension: int,
) -> tuple[WriteResult, int]:
    """Write chunks, then drop the tail chunks of documents that got shorter."""
    ingested_at = datetime.now(UTC)
    with _store(settings) as store:
        store.ensure_schema(source.kind, model_id, dimension)
        with stage_progress(f"write {source.name}") as advance:
            result = store.upsert(
                embedded,
                ingested_at=ingested_at,
                flow_run_id=flow_run_id,
                model_id=model_id,
                progress=advance,
            )
        new_counts: dict[str, int] = {}
        for item in embedded:
            new_counts[item.chunk.document_id] = item.chunk.chunk_count
        trimmed = 0
        for document in plan.changed:
            previous = plan.previous.get(document.document_id)
            now = new_counts.get(document.document_id, 0)
            if previous and previous.chunk_count > now:
                trimmed += store.delete_positions_from(
                    source.kind, document.document_id, now, document.customer_id
                )
    return result, trimmed


@task(name="delete", **TASK_OPTIONS)
def delete_task(settings: Settings, source: SourceConfig, gone: tuple[StoredDocument, ...]) -> int:
    """Delete the chunks of documents that left the source."""
    if not gone:
        return 0
    with _store(settings) as store:
        return store.delete_documents(source.kind, gone)


def _embedding_model(settings: Settings) -> tuple[str, int, int]:
    embedder = get_embedder(
        settings.embedding_model, settings.embedding_device, settings.embedding_batch_size
    )
    return embedder.model_id, embedder.dimension, embedder.max_tokens


@flow(name="ingest", log_prints=False)
def ingest_source(
    source: str | None = None,
    config_file: str | None = None,
    source_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ingest one source, named in the config file or given inline; returns the run report."""
    settings = Settings()
    config = (
        SourceConfig.model_validate(source_config)
        if source_config is not None
        else get_source(source or "", None if config_file is None else Path(config_file))
    )
    run_id = str(flow_run.id or "local")
    report = RunReport(source=config.name, kind=config.kind.value, flow_run_id=run_id)
    timings = report.stage_seconds
    logger = get_run_logger()

    def timed(stage: str, started: float) -> None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started

    try:
        started = time.perf_counter()
        model_id, dimension, max_tokens = _embedding_model(settings)
        timed("model", started)

        started = time.perf_counter()
        loaded = load_task(config)
        timed("load", started)
        report.documents_seen = len(loaded.documents) + len(loaded.failures)
        report.documents_failed = len(loaded.failures)
        report.failures = [{"item": f.item, "reason": f.reason} for f in loaded.failures]

        started = time.perf_counter()
        plan = plan_task(settings, config, loaded)
        timed("plan", started)
        report.documents_new = len(plan.new)
        report.documents_changed = len(plan.changed)
        report.documents_unchanged = len(plan.unchanged)
        report.documents_deleted = len(plan.deleted)

        policy = ChunkingPolicy.for_window(max_tokens, settings.chunk_max_chars)
        started = time.perf_counter()
        chunks = chunk_task(plan.to_write, policy) if plan.to_write else []
        timed("chunk", started)

        started = time.perf_counter()
        embedded, stats = embed_task(settings, chunks) if chunks else ([], EmbedStats(0, 0))
        timed("embed", started)
        report.chunks_embedded = len(embedded)
        report.embeddings_computed = stats.computed
        report.embeddings_cached = stats.cached

        started = time.perf_counter()
        if embedded or plan.changed:
            result, trimmed = upsert_task(
                settings, config, embedded, plan, run_id, model_id, dimension
            )
            report.objects_written = result.written
            report.objects_deleted += trimmed
            report.objects_failed = [{"uuid": u, "reason": m} for u, m in result.failed]
        timed("write", started)

        started = time.perf_counter()
        report.objects_deleted += delete_task(settings, config, plan.deleted)
        timed("delete", started)
        if report.objects_failed:
            report.status = "failed"
            report.error = f"{len(report.objects_failed)} objects failed to write"
    except FreshkbError as exc:
        report.status = "failed"
        report.error = str(exc)
        logger.error("ingest of %s failed: %s", config.name, exc)
    except Exception as exc:  # an unexpected bug still ends as a failed report, not a crash
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"
        logger.exception("ingest of %s failed unexpectedly", config.name)
    _publish(report)
    return report.to_dict()


def _publish(report: RunReport) -> None:
    """Log the report and attach it to the flow run as a markdown artifact."""
    get_run_logger().info(
        "ingest %s: %s new, %s changed, %s unchanged, %s deleted, %s failed; %s written",
        report.source,
        report.documents_new,
        report.documents_changed,
        report.documents_unchanged,
        report.documents_deleted,
        report.documents_failed,
        report.objects_written,
    )
    create_markdown_artifact(
        markdown=report.markdown(),
        key=f"ingest-{report.source}".lower().replace("_", "-"),
        description=f"freshkb ingest report for {report.source}",
    )


@flow(name="ingest-all")
def ingest_all(config_file: str | None = None) -> list[dict[str, Any]]:
    """Ingest every declared source; one source failing does not stop the others."""
    sources = load_sources(None if config_file is None else Path(config_file))
    return [ingest_source(source.name, config_file) for source in sources]
