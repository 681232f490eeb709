"""Prefect flows: ingest one source, or all of them.

ingest: load -> plan -> gate (mass-deletion breaker, Great Expectations) -> per batch of
documents: chunk -> embed -> screen -> upsert; then delete -> verify. Nothing is written unless
the gate passes for the whole plan, and only a run that passes the gate and the post-write count
check moves the source's last successful sync in the freshness ledger. The batches run as one
task each, submitted to the task runner the settings choose (threads, or a Dask cluster), at
most `ingest_parallel_batches` at a time: memory follows the batch size (`ingest_batch_documents`)
times that window, not the size of the source. Deletes and the post-write check wait for every
batch. The flow only orchestrates: the stages are tasks in flows/tasks.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from freshkb.core.config import Settings
from freshkb.core.errors import DataError, FreshkbError
from freshkb.core.records import LoadResult, SyncPlan
from freshkb.core.report import ObjectFailure, RunReport
from freshkb.core.sources import AnySource, get_source, load_sources, parse_source
from freshkb.core.timing import timed
from freshkb.embeddings.chunking import ChunkingPolicy
from freshkb.embeddings.embed import EmbedStats
from freshkb.flows.tasks import (
    TASK_OPTIONS,
    ModelInfo,
    WriteBatch,
    batch_runner,
    chunk_task,
    delete_task,
    embed_task,
    embedding_model,
    expected_documents,
    index_state_task,
    indexed_settings,
    load_task,
    plan_task,
    run_inline,
    run_task,
    screen_task,
    upsert_task,
    validate_task,
    verify_task,
    write_batches,
)
from freshkb.store.active_config import active_settings
from freshkb.store.ledger import Ledger, ledger_unavailable
from freshkb.validation.breaker import check_deletions


@dataclass(frozen=True)
class IngestRun:
    """What one run works on: the source, where it writes, and what it may do."""

    settings: Settings
    source: AnySource
    flow_run_id: str
    allow_mass_delete: bool = False
    target: str | None = None  # a rebuild's new collection version; None: the live index


@flow(name="ingest", log_prints=False)
def ingest_source(
    source: str | None = None,
    config_file: str | None = None,
    source_config: dict[str, Any] | None = None,
    allow_mass_delete: bool = False,
    target_collection: str | None = None,
) -> RunReport:
    """Ingest one source, named in the config file or given inline; returns the run report.

    With `target_collection` (a rebuild), the run fills that version instead of the live one and
    leaves the ledger to the rebuild, which records the sources only once it promotes.
    """
    # The promoted embedding model (store/active_config.py), where one was promoted.
    configured = Settings(config_file=Path(config_file)) if config_file else Settings()
    settings = active_settings(configured)
    config = (
        parse_source(source_config)
        if source_config is not None
        else get_source(source or "", settings.config_file)
    )
    run = IngestRun(
        settings, config, str(flow_run.id or "local"), allow_mass_delete, target_collection
    )
    report = RunReport(source=config.name, kind=config.kind.value, flow_run_id=run.flow_run_id)
    ledger: Ledger | None = None
    ledger_run = 0
    try:
        if target_collection is None:
            ledger, ledger_run = _start_in_ledger(run)
        run_stages(run, report)
    except Exception as exc:  # an error, or a bug, ends as a failed report, never a crash
        report.fail(exc)
        unexpected = not isinstance(exc, FreshkbError)
        get_run_logger().error(
            "ingest of %s failed: %s", config.name, report.error, exc_info=unexpected
        )
    if ledger is not None:
        _finish_in_ledger(ledger, ledger_run, run, report)
    _publish(report)
    return report


def _start_in_ledger(run: IngestRun) -> tuple[Ledger, int]:
    """Record the run as started; a LedgerUnavailable, before any stage, if the ledger cannot.

    A run whose success the ledger could not record would leave answers judging the source by
    an old sync, so no run begins without the ledger: the run fails with nothing written.
    """
    url = run.settings.ledger_database_url
    ledger = None
    try:
        ledger = Ledger(url)
        return ledger, ledger.record_attempt(run.source, run.flow_run_id, datetime.now(UTC))
    except Exception as exc:
        if ledger is not None:
            ledger.close()
        raise ledger_unavailable(url, exc, f"nothing of {run.source.name} was ingested") from exc


def _finish_in_ledger(ledger: Ledger, ledger_run: int, run: IngestRun, report: RunReport) -> None:
    """Record how the run ended; a ledger lost since the start fails the run, and says so."""
    url = run.settings.ledger_database_url
    try:
        ledger.record_result(ledger_run, report, datetime.now(UTC), report.newest_record_at)
    except Exception as exc:
        earlier = f" (the run itself had failed: {report.error})" if report.error else ""
        report.fail(
            ledger_unavailable(
                url,
                exc,
                "this run's writes are in the index but its result is not recorded, so the "
                f"last successful sync of {run.source.name} stays as it was{earlier}",
            )
        )
        get_run_logger().error("ingest of %s failed: %s", run.source.name, report.error)
    finally:
        ledger.close()


def run_stages(run: IngestRun, report: RunReport) -> None:
    """Every stage of one ingest, in order; raises on the first that fails."""
    timings = report.stage_seconds
    runner = batch_runner(run.settings)  # a wrong task runner setting fails before any work
    with timed(timings, "model"):
        run = replace(run, settings=indexed_settings(run.settings, run.source.kind, run.target))
        model = embedding_model(run.settings)
    with timed(timings, "load"):
        stored = run_task(
            index_state_task, run.settings, run.source, model, run.flow_run_id, run.target
        )
        complete = {doc_id: doc.content_hash for doc_id, doc in stored.items() if doc.complete}
        loaded = run_task(load_task, run.source, complete, run.settings.partition_processes)
    report.count_load(loaded)
    with timed(timings, "plan"):
        plan = run_task(plan_task, run.source, loaded, stored)
    report.count_plan(plan)
    with timed(timings, "validate"):
        _gate(run, plan, loaded, report)
    rewritten = _write(run, model, plan, report, runner)
    with timed(timings, "verify"):
        expected = expected_documents(plan, rewritten)
        report.objects_live = run_task(verify_task, run.settings, run.source, expected, run.target)


def _gate(run: IngestRun, plan: SyncPlan, loaded: LoadResult, report: RunReport) -> None:
    """The mass-deletion breaker, then the source's expectations; a DataError if refused."""
    check_deletions(
        run.source.name,
        plan,
        live_documents=len(plan.stored),
        max_share=run.source.expectations.max_delete_share,
        allow=run.allow_mass_delete,
    )
    outcome = run_task(
        validate_task, run.settings, run.source, loaded, run.flow_run_id, run.allow_mass_delete
    )
    report.validation = outcome.summary()
    report.newest_record_at = outcome.newest_record_at
    if not outcome.success:
        raise DataError(
            f"validation failed ({outcome.failed} of {outcome.evaluated} expectations), "
            f"nothing written: " + "; ".join(outcome.failures)
        )


@dataclass
class BatchOutcome:
    """What writing one batch did: counts, refused objects, and its seconds per stage."""

    number: int
    chunk_counts: dict[str, int] = field(default_factory=dict)  # document id -> chunks written
    embedded: int = 0
    flagged: int = 0
    computed: int = 0
    cached: int = 0
    passages: int = 0
    written: int = 0
    trimmed: int = 0
    failed: list[ObjectFailure] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _write(
    run: IngestRun, model: ModelInfo, plan: SyncPlan, report: RunReport, runner: TaskRunner[Any]
) -> dict[str, int]:
    """Write what is new or changed batch by batch on `runner`, then delete what left the
    source; returns the chunks written per document (for the post-write check)."""
    policy = ChunkingPolicy.for_window(model.max_tokens, run.settings.chunk_max_chars)
    rewritten: dict[str, int] = {}
    for outcome in _run_batches(run, model, policy, plan, runner):
        _count_batch(report, outcome)
        rewritten.update(outcome.chunk_counts)
    with timed(report.stage_seconds, "delete"):
        report.objects_deleted += run_task(
            delete_task, run.settings, run.source, plan.deleted, run.target
        )
    if report.objects_failed:
        raise DataError(f"{len(report.objects_failed)} objects failed to write")
    return rewritten


def _run_batches(
    run: IngestRun,
    model: ModelInfo,
    policy: ChunkingPolicy,
    plan: SyncPlan,
    runner: TaskRunner[Any],
) -> Iterator[BatchOutcome]:
    """Every batch's outcome, at most `ingest_parallel_batches` of them in flight on the
    configured task runner; the first failure ends the run once the batches in flight finish.

    A window rather than every batch submitted at once: a batch holds its documents, chunks and
    vectors while in flight, so memory follows the window, not the size of the source. The
    outcomes of batches that finished are yielded (and counted) before the failure is raised:
    their objects are in the index.
    """
    batches = write_batches(plan, run.settings.ingest_batch_documents)
    if not isinstance(write_batch_task, Task):  # bench/stage_bench.py's plain run
        yield from (write_batch_task(run, model, policy, batch) for batch in batches)
        return
    in_flight: dict[PrefectFuture[BatchOutcome], int] = {}
    failures: list[tuple[int, Exception]] = []

    def settle(future: PrefectFuture[BatchOutcome]) -> BatchOutcome | None:
        number = in_flight.pop(future)
        try:
            return future.result()
        except Exception as exc:  # kept: every batch in flight finishes first
            failures.append((number, exc))
            return None

    with runner:
        for batch in batches:
            while len(in_flight) >= run.settings.ingest_parallel_batches:
                if (outcome := settle(next(as_completed(list(in_flight))))) is not None:
                    yield outcome
            if failures:
                break
            future = runner.submit(
                write_batch_task, batch_parameters(runner, run, model, policy, batch)
            )
            in_flight[future] = batch.number
        for future in as_completed(list(in_flight)):
            if (outcome := settle(future)) is not None:
                yield outcome
    if failures:
        number, first = min(failures, key=lambda failure: failure[0])
        get_run_logger().error("batch %s of %s failed: %s", number, run.source.name, first)
        raise first


def batch_parameters(
    runner: TaskRunner[Any],
    run: IngestRun,
    model: ModelInfo,
    policy: ChunkingPolicy,
    batch: WriteBatch,
) -> dict[str, Any]:
    """The batch task's parameters: quoted as run_task quotes them, except for Dask.

    Quoting spares the walk of every document for futures to wait on. Dask cannot carry a
    quote (an annotation is a namedtuple, which Dask unpacks into a plain tuple on the way),
    so there the worker walks the batch's documents: 0.1 s for 200 documents of 20 sections
    (measured), and no chunks or vectors are in it.
    """
    wrap: Any = quote if isinstance(runner, ThreadPoolTaskRunner) else (lambda value: value)
    return {
        "run": wrap(run),
        "model": wrap(model),
        "policy": wrap(policy),
        "batch": wrap(batch),
    }


@task(name="write-batch", **TASK_OPTIONS)
def write_batch_task(
    run: IngestRun, model: ModelInfo, policy: ChunkingPolicy, batch: WriteBatch
) -> BatchOutcome:
    """Chunk, embed, screen and upsert one batch; its chunks and vectors die with the call.

    One task per batch, its stages called inside it rather than as tasks of their own: a task
    run costs Prefect bookkeeping (and a process hop on Dask), worth paying per batch, never
    per chunk. A retry (transient errors only) redoes the batch, which writes the same UUIDs.
    """
    outcome = BatchOutcome(batch.number)
    timings, settings = outcome.stage_seconds, run.settings
    with timed(timings, "chunk"):
        chunks = run_inline(chunk_task, batch.documents, policy)
    with timed(timings, "embed"):
        embedded, stats = (
            run_inline(embed_task, settings, chunks) if chunks else ([], EmbedStats(0, 0))
        )
    with timed(timings, "screen"):  # after embedding: passages judged from their vectors
        screened = run_inline(screen_task, settings, chunks) if chunks else []
    embedded = [replace(e, chunk=c) for e, c in zip(embedded, screened, strict=True)]
    outcome.flagged = sum(1 for chunk in screened if chunk.injection_reason)
    outcome.computed, outcome.cached = stats.computed, stats.cached
    outcome.passages = stats.passages
    outcome.embedded = len(embedded)
    outcome.chunk_counts = {item.chunk.document_id: item.chunk.chunk_count for item in embedded}
    with timed(timings, "write"):
        if embedded or batch.previous:
            result, outcome.trimmed = run_inline(
                upsert_task,
                settings,
                run.source,
                embedded,
                batch,
                run.flow_run_id,
                model,
                run.target,
            )
            outcome.written = result.written
            outcome.failed = [ObjectFailure(u, m) for u, m in result.failed]
    return outcome


def _count_batch(report: RunReport, outcome: BatchOutcome) -> None:
    """Add one batch's counts and stage seconds to the run report."""
    report.chunks_embedded += outcome.embedded
    report.chunks_flagged += outcome.flagged
    report.embeddings_computed += outcome.computed
    report.embeddings_cached += outcome.cached
    report.passages_embedded += outcome.passages
    report.objects_written += outcome.written
    report.objects_deleted += outcome.trimmed
    report.objects_failed.extend(outcome.failed)
    for stage, seconds in outcome.stage_seconds.items():
        report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + seconds


def open_ledger(settings: Settings) -> Ledger:
    """The freshness ledger, or a LedgerUnavailable naming it, the cause and the fix."""
    try:
        return Ledger(settings.ledger_database_url)
    except Exception as exc:
        raise ledger_unavailable(settings.ledger_database_url, exc) from exc


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
def ingest_all(config_file: str | None = None, allow_mass_delete: bool = False) -> list[RunReport]:
    """Ingest every declared source; one source failing does not stop the others."""
    sources = load_sources(None if config_file is None else Path(config_file))
    return [
        ingest_source(source.name, config_file, allow_mass_delete=allow_mass_delete)
        for source in sources
    ]
