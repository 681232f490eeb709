"""Prefect flow: rebuild a collection as a new version from every source of its kind, then
switch the alias answers read to it, all or nothing. Used when the embedding model or the
schema changes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from freshkb.core.config import Settings
from freshkb.core.records import SourceKind
from freshkb.core.report import RebuildReport, RunReport
from freshkb.core.sources import AnySource, load_sources, parse_source
from freshkb.flows.ingest import ingest_source, open_ledger
from freshkb.flows.tasks import embedding_model, index, indexed_settings
from freshkb.store.active_config import active_settings


@flow(name="rebuild")
def rebuild_index(
    kind: str, config_file: str | None = None, sources: list[dict[str, Any]] | None = None
) -> RebuildReport:
    """Build a new version of one collection from every source of `kind`, then switch to it.

    The alias that answers read moves only when every source loaded, passed its gate and was
    verified in the new version; otherwise the new version is kept, marked failed, and answers
    keep using the old one.
    """
    # The promoted embedding model (store/active_config.py), where one was promoted.
    configured = Settings(config_file=Path(config_file)) if config_file else Settings()
    settings = active_settings(configured)
    source_kind = SourceKind(kind)
    declared = (
        [parse_source(item) for item in sources]
        if sources is not None
        else load_sources(settings.config_file)
    )
    chosen = [s for s in declared if s.kind is source_kind]
    report = RebuildReport(kind=kind, flow_run_id=str(flow_run.id or "local"))
    if not chosen:
        report.error = f"no {kind} sources declared: nothing to rebuild"
        return report
    # 'auto' keeps the precision of the index in use (a new model: int8 on a CPU); each
    # source's run below follows the new version's model id (embeddings/embedder.py).
    model = embedding_model(indexed_settings(settings, source_kind, None))
    started_at = datetime.now(UTC)
    with index(settings) as store:
        # Failed builds are kept for inspection until the next rebuild, and dropped only after
        # the new version has taken the next number: a name always means one build.
        version = store.create_version(
            source_kind, model.model_id, model.dimension, report.flow_run_id
        )
        report.dropped = store.drop_failed_versions(source_kind)
    report.version, report.model_id = version, model.model_id
    report.reports = [
        ingest_source(source_config=s.model_dump(mode="json"), target_collection=version)
        for s in chosen
    ]
    _switch(settings, source_kind, report)
    if report.promoted:
        _record_sources(settings, chosen, report.reports, report.flow_run_id, started_at)
    return report


def _switch(settings: Settings, kind: SourceKind, report: RebuildReport) -> None:
    """Promote the new version when every source completed; else mark it failed and say why."""
    assert report.version is not None
    failed = [r for r in report.reports if not r.completed]
    with index(settings) as store:
        if failed:
            store.mark_failed(report.version)
            report.error = (
                f"{report.version} not promoted (kept, marked failed, until the next rebuild); "
                "answers still use the previous version: "
                + "; ".join(f"{r.source}: {r.error}" for r in failed)
            )
            return
        report.previous = store.promote(kind, report.version)
    report.promoted = True


def _record_sources(
    settings: Settings,
    sources: list[AnySource],
    reports: list[RunReport],
    flow_run_id: str,
    started_at: datetime,
) -> None:
    """Each rebuilt source's sync, in the ledger, once the new version answers."""
    ledger = open_ledger(settings)
    try:
        for source, run_report in zip(sources, reports, strict=True):
            run = ledger.record_attempt(source, flow_run_id, started_at)
            ledger.record_result(run, run_report, datetime.now(UTC), run_report.newest_record_at)
    finally:
        ledger.close()
