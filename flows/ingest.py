"""Prefect flows: ingest one source, all of them, or rebuild an index version.

ingest: load -> plan -> gate (mass-deletion breaker, Great Expectations) -> chunk -> embed ->
upsert -> delete -> verify. Nothing is written unless the gate passes, and only a run that
passes the gate and the post-write count check moves the source's last successful sync in the
freshness ledger.

The flow only orchestrates. Each task wraps one stage function from loaders/, validation/,
embeddings/ or store/, takes and returns plain records, and opens its own Weaviate connection,
so a distributed task runner could run it on another machine. Retries are on tasks, and only
for transient errors: a corrupt file or a wrong setting does not get better by retrying.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from freshkb.embeddings.cache import VectorCache
from freshkb.embeddings.chunking import ChunkingPolicy, chunk_documents
from freshkb.embeddings.embed import EmbedStats, embed_chunks
from freshkb.embeddings.embedder import get_embedder
from freshkb.core.config import Settings, SourceConfig, get_source, load_sources
from freshkb.core.errors import ConfigError, DataError, FreshkbError, TransientError
from freshkb.core.progress import stage_progress
from freshkb.core.records import (
    Chunk,
    EmbeddedChunk,
    LoadedDocument,
    LoadResult,
    SourceKind,
    StoredDocument,
    SyncPlan,
)
from freshkb.core.report import RunReport
from freshkb.loaders import loader_for
from freshkb.store.ledger import Ledger
from freshkb.store.sync import plan_sync
from freshkb.store.weaviate_store import WeaviateStore, WriteResult, connect
from freshkb.validation.breaker import check_deletions
from freshkb.validation.gate import ValidationOutcome, validate_load


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
def _store(
    settings: Settings, kind: SourceKind | None = None, target: str | None = None
) -> Iterator[WeaviateStore]:
    """A store on its own connection; with `target`, `kind` reads and writes that version."""
    client = connect(settings)
    try:
        store = WeaviateStore(client)
        if target is not None and kind is not None:
            store.use_collection(kind, target)
        yield store
    finally:
        client.close()


@dataclass(frozen=True)
class ModelInfo:
    """The embedding model a run writes vectors of."""

    model_id: str
    dimension: int
    max_tokens: int


@task(name="index-state", **TASK_OPTIONS)
def index_state_task(
    settings: Settings,
    source: SourceConfig,
    model: ModelInfo,
    flow_run_id: str,
    target: str | None,
) -> dict[str, StoredDocument]:
    """What the index (the live one, or `target`) holds for this source, per document.

    Also makes sure the live collection exists and was built with the configured model. Read
    once per run: the load uses it to skip unchanged files, the plan to compare against.
    """
    with _store(settings, source.kind, target) as store:
        if target is None:
            store.ensure_schema(source.kind, model.model_id, model.dimension, flow_run_id)
        return store.stored_documents(source.name, source.kind)


@task(name="load", **TASK_OPTIONS)
def load_task(source: SourceConfig, indexed: dict[str, str] | None = None) -> LoadResult:
    """Pull every document or record of a source; bad items become failures.

    Files whose bytes hash as in `indexed` come back unparsed (see DocumentFolderLoader).
    """
    loader = loader_for(source, indexed)
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
    settings: Settings,
    source: SourceConfig,
    loaded: LoadResult,
    flow_run_id: str,
    allow_empty: bool,
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
def screen_task(chunks: list[Chunk]) -> list[Chunk]:
    """Flag chunks that carry instructions aimed at an AI (indirect prompt injection).

    Flagged chunks are still stored, so search and audits see them, but carry the reason; the
    answer path never puts them in front of the LLM.
    """
    from freshkb.serving.safety import get_injection_guard

    verdicts = get_injection_guard().inspect_documents([chunk.text for chunk in chunks])
    return [
        replace(chunk, injection_reason="; ".join(verdict.reasons)[:2000])
        if verdict.flagged
        else chunk
        for chunk, verdict in zip(chunks, verdicts, strict=True)
    ]


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
    model: ModelInfo,
    target: str | None,
) -> tuple[WriteResult, int]:
    """Write chunks, then drop the tail chunks of documents that got shorter."""
    ingested_at = datetime.now(UTC)
    with _store(settings, source.kind, target) as store:
        if target is None:
            store.ensure_schema(source.kind, model.model_id, model.dimension, flow_run_id)
        with stage_progress(f"write {source.name}") as advance:
            result = store.upsert(
                embedded,
                ingested_at=ingested_at,
                flow_run_id=flow_run_id,
                model_id=model.model_id,
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
def delete_task(
    settings: Settings,
    source: SourceConfig,
    gone: tuple[StoredDocument, ...],
    target: str | None,
) -> int:
    """Delete the chunks of documents that left the source."""
    if not gone:
        return 0
    with _store(settings, source.kind, target) as store:
        return store.delete_documents(source.kind, gone)


@task(name="verify", **TASK_OPTIONS)
def verify_task(settings: Settings, source: SourceConfig, expected: int, target: str | None) -> int:
    """Count the source's objects after the writes; a mismatch fails the run."""
    with _store(settings, source.kind, target) as store:
        found = store.count(source.kind, source.name)
    if found != expected:
        raise DataError(
            f"post-write check: {expected} objects of source {source.name!r} expected in the "
            f"index, {found} found; the run is marked failed and the next run repairs it"
        )
    return found


def expected_objects(plan: SyncPlan, embedded: list[EmbeddedChunk]) -> int:
    """Objects the source must have after the run: new chunk counts of rewritten documents,
    stored counts of unchanged ones and of those kept after a failed load."""
    rewritten = {item.chunk.document_id: item.chunk.chunk_count for item in embedded}
    unchanged = sum(plan.stored[doc.document_id].chunk_count for doc in plan.unchanged)
    kept = sum(doc.chunk_count for doc in plan.kept_after_failure)
    return sum(rewritten.values()) + unchanged + kept


def _model(settings: Settings) -> ModelInfo:
    embedder = get_embedder(
        settings.embedding_model, settings.embedding_device, settings.embedding_batch_size
    )
    return ModelInfo(embedder.model_id, embedder.dimension, embedder.max_tokens)


def _open_ledger(settings: Settings) -> Ledger:
    try:
        return Ledger(settings.ledger_database_url)
    except Exception as exc:
        raise ConfigError(
            f"cannot open the freshness ledger at {settings.ledger_database_url}: {exc}; "
            "check FRESHKB_LEDGER_URL"
        ) from exc


@flow(name="ingest", log_prints=False)
def ingest_source(
    source: str | None = None,
    config_file: str | None = None,
    source_config: dict[str, Any] | None = None,
    allow_mass_delete: bool = False,
    target_collection: str | None = None,
) -> dict[str, Any]:
    """Ingest one source, named in the config file or given inline; returns the run report.

    With `target_collection` (a rebuild), the run fills that version instead of the live one and
    leaves the ledger to the rebuild, which records the sources only once it promotes.
    """
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
    ledger = _open_ledger(settings) if target_collection is None else None
    ledger_run = (
        ledger.record_attempt(config, run_id, datetime.now(UTC)) if ledger is not None else None
    )
    newest_record_at = None

    def timed(stage: str, started: float) -> None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started

    try:
        started = time.perf_counter()
        model = _model(settings)
        timed("model", started)

        started = time.perf_counter()
        stored = index_state_task(settings, config, model, run_id, target_collection)
        complete = {doc_id: doc.content_hash for doc_id, doc in stored.items() if doc.complete}
        loaded = load_task(config, complete)
        timed("load", started)
        report.documents_reused = sum(1 for d in loaded.documents if d.metadata.get("reused"))
        report.documents_seen = len(loaded.documents) + len(loaded.failures)
        report.documents_failed = len(loaded.failures)
        report.failures = [{"item": f.item, "reason": f.reason} for f in loaded.failures]

        started = time.perf_counter()
        plan = plan_task(config, loaded, stored)
        timed("plan", started)
        report.documents_new = len(plan.new)
        report.documents_changed = len(plan.changed)
        report.documents_unchanged = len(plan.unchanged)
        report.documents_deleted = len(plan.deleted)

        started = time.perf_counter()
        check_deletions(
            config.name,
            plan,
            live_documents=len(plan.stored),
            max_share=config.expectations.max_delete_share,
            allow=allow_mass_delete,
        )
        outcome = validate_task(settings, config, loaded, run_id, allow_mass_delete)
        timed("validate", started)
        report.validation = outcome.summary()
        newest_record_at = outcome.newest_record_at
        if not outcome.success:
            raise DataError(
                f"validation failed ({outcome.failed} of {outcome.evaluated} expectations), "
                f"nothing written: " + "; ".join(outcome.failures)
            )

        policy = ChunkingPolicy.for_window(model.max_tokens, settings.chunk_max_chars)
        started = time.perf_counter()
        chunks = chunk_task(plan.to_write, policy) if plan.to_write else []
        timed("chunk", started)

        started = time.perf_counter()
        chunks = screen_task(chunks) if chunks else []
        timed("screen", started)
        report.chunks_flagged = sum(1 for chunk in chunks if chunk.injection_reason)

        started = time.perf_counter()
        embedded, stats = embed_task(settings, chunks) if chunks else ([], EmbedStats(0, 0))
        timed("embed", started)
        report.chunks_embedded = len(embedded)
        report.embeddings_computed = stats.computed
        report.embeddings_cached = stats.cached

        started = time.perf_counter()
        if embedded or plan.changed:
            result, trimmed = upsert_task(
                settings, config, embedded, plan, run_id, model, target_collection
            )
            report.objects_written = result.written
            report.objects_deleted += trimmed
            report.objects_failed = [{"uuid": u, "reason": m} for u, m in result.failed]
        timed("write", started)

        started = time.perf_counter()
        report.objects_deleted += delete_task(settings, config, plan.deleted, target_collection)
        timed("delete", started)
        if report.objects_failed:
            raise DataError(f"{len(report.objects_failed)} objects failed to write")

        started = time.perf_counter()
        report.objects_live = verify_task(
            settings, config, expected_objects(plan, embedded), target_collection
        )
        timed("verify", started)
    except FreshkbError as exc:
        report.status = "failed"
        report.error = str(exc)
        logger.error("ingest of %s failed: %s", config.name, exc)
    except Exception as exc:  # an unexpected bug still ends as a failed report, not a crash
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"
        logger.exception("ingest of %s failed unexpectedly", config.name)
    result_dict = report.to_dict()
    if ledger is not None and ledger_run is not None:
        try:
            ledger.record_result(ledger_run, result_dict, datetime.now(UTC), newest_record_at)
        finally:
            ledger.close()
    result_dict["newest_record_at"] = newest_record_at.isoformat() if newest_record_at else None
    _publish(report)
    return result_dict


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
def ingest_all(
    config_file: str | None = None, allow_mass_delete: bool = False
) -> list[dict[str, Any]]:
    """Ingest every declared source; one source failing does not stop the others."""
    sources = load_sources(None if config_file is None else Path(config_file))
    return [
        ingest_source(source.name, config_file, allow_mass_delete=allow_mass_delete)
        for source in sources
    ]


@flow(name="rebuild")
def rebuild_index(
    kind: str, config_file: str | None = None, sources: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Build a new version of one collection from every source of `kind`, then switch to it.

    The alias that answers read moves only when every source loaded, passed its gate and was
    verified in the new version; otherwise the new version is dropped and answers keep using
    the old one. Used when the embedding model or the schema changes.
    """
    settings = Settings()
    source_kind = SourceKind(kind)
    declared = (
        [SourceConfig.model_validate(item) for item in sources]
        if sources is not None
        else load_sources(None if config_file is None else Path(config_file))
    )
    chosen = [s for s in declared if s.kind is source_kind]
    run_id = str(flow_run.id or "local")
    summary: dict[str, Any] = {"kind": kind, "flow_run_id": run_id, "promoted": False}
    if not chosen:
        summary["error"] = f"no {kind} sources declared: nothing to rebuild"
        return summary
    model = _model(settings)
    started_at = datetime.now(UTC)
    with _store(settings) as store:
        # Failed builds are kept for inspection until the next rebuild, and dropped only after
        # the new version has taken the next number: a name always means one build.
        version = store.create_version(source_kind, model.model_id, model.dimension, run_id)
        summary["dropped"] = store.drop_failed_versions(source_kind)
    summary |= {"version": version, "model_id": model.model_id}
    reports = [
        ingest_source(source_config=s.model_dump(mode="json"), target_collection=version)
        for s in chosen
    ]
    summary["reports"] = reports
    failed = [r for r in reports if r["status"] != "completed"]
    with _store(settings) as store:
        if failed:
            store.mark_failed(version)
            summary["error"] = (
                f"{version} not promoted (kept, marked failed, until the next rebuild); answers "
                "still use the previous version: "
                + "; ".join(f"{r['source']}: {r['error']}" for r in failed)
            )
            return summary
        summary["previous"] = store.promote(source_kind, version)
    summary["promoted"] = True
    ledger = _open_ledger(settings)
    try:
        for source_config, report in zip(chosen, reports, strict=True):
            run = ledger.record_attempt(source_config, run_id, started_at)
            newest = report.get("newest_record_at")
            ledger.record_result(
                run,
                report,
                datetime.now(UTC),
                datetime.fromisoformat(newest) if newest else None,
            )
    finally:
        ledger.close()
    return summary
