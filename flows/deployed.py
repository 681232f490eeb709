"""The flows Prefect deployments run: one source, every source, and the freshness check.

`ingest_source` (flows/ingest.py) never raises: a failed run is a report with status failed,
which a CLI prints. A deployment needs the opposite, so that Prefect's state, retries and
automations see the failure: these flows run the same ingest, under the source's concurrency
slot, and raise IngestFailed with the report's reason once the report is published (artifact)
and recorded (ledger). A failed run is tried again only while Weaviate is unreachable, the one
transient cause that outlasts the task-level retries; a refused gate or a broken file is not.
Each run ends by announcing every declared source past its freshness SLA as a Prefect event
(`freshkb.source.stale`), which an automation can answer by re-running that source.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event

from freshkb.core.config import TEMPORARY_PREFECT_MARKER, Settings
from freshkb.core.errors import FreshkbError
from freshkb.core.report import RunReport
from freshkb.core.sources import load_sources
from freshkb.flows.ingest import ingest_source
from freshkb.store import server
from freshkb.store.active_config import active_settings
from freshkb.store.ledger import Ledger
from freshkb.validation.freshness import FreshnessState, SourceFreshness

SOURCE_FLOW = "ingest-source"
STALE_EVENT = "freshkb.source.stale"
ATTEMPTS = 3
RETRY_DELAY_SECONDS = 60.0


class IngestFailed(FreshkbError):
    """An ingest whose report says it failed: the flow run ends Failed with this reason."""


def source_limit_name(source: str) -> str:
    """The global concurrency limit (one slot) that every run of `source` takes."""
    return f"freshkb-source-{source}"


@contextmanager
def source_slot(source: str) -> Iterator[None]:
    """Hold the source's single slot while ingesting it, so two runs of it never overlap.

    Only against a Prefect server (PREFECT_API_URL set): `freshkb deploy` creates the limits
    there. In ephemeral mode every process has its own temporary server, so a limit would
    serialize nothing and is not taken (nor on the temporary server a one-off command starts
    early, cli/temporary_prefect.py).
    """
    if not os.environ.get("PREFECT_API_URL") or os.environ.get(TEMPORARY_PREFECT_MARKER):
        yield
        return
    # Not strict: on a server where `freshkb deploy` never ran, Prefect warns and runs free.
    with concurrency(source_limit_name(source), occupy=1, strict=False):
        yield


@flow(name=SOURCE_FLOW, log_prints=False)
def ingest_source_deployed(
    source: str,
    config_file: str | None = None,
    allow_mass_delete: bool = False,
    retry_delay_seconds: float = RETRY_DELAY_SECONDS,
) -> RunReport:
    """Ingest one declared source under its slot; a failed run ends Failed with its reason."""
    settings = _settings(config_file)
    start_store(settings)
    for attempt in range(1, ATTEMPTS + 1):
        with source_slot(source):
            report = ingest_source(source, config_file, allow_mass_delete=allow_mass_delete)
        if report.completed or attempt == ATTEMPTS or not store_unreachable(settings):
            break
        get_run_logger().warning(
            "ingest of %s failed with Weaviate unreachable (attempt %s of %s); retrying in %.0fs",
            source,
            attempt,
            ATTEMPTS,
            retry_delay_seconds,
        )
        time.sleep(retry_delay_seconds)
    announce_stale_sources(settings)
    if not report.completed:
        raise IngestFailed(f"ingest of {source} failed: {report.error}")
    return report


@flow(name="ingest-all-sources", log_prints=False)
def ingest_all_deployed(config_file: str | None = None) -> list[RunReport]:
    """Ingest every declared source, each under its slot; Failed if any of them failed."""
    settings = _settings(config_file)
    start_store(settings)
    reports = []
    for declared in load_sources(settings.config_file):
        with source_slot(declared.name):
            reports.append(ingest_source(declared.name, config_file))
    announce_stale_sources(settings)
    failed = [report for report in reports if not report.completed]
    if failed:
        reasons = "; ".join(f"{report.source}: {report.error}" for report in failed)
        raise IngestFailed(f"{len(failed)} of {len(reports)} sources failed: {reasons}")
    return reports


@flow(name="check-freshness", log_prints=False)
def check_freshness(config_file: str | None = None) -> list[str]:
    """Announce every declared source past its freshness SLA; returns their names."""
    return announce_stale_sources(_settings(config_file))


def start_store(settings: Settings) -> None:
    """Start the managed Weaviate as `freshkb ingest` does; if it cannot start, the ingest
    itself fails with the reason, in its report and the ledger."""
    try:
        server.ensure_running(settings, announce=get_run_logger().info)
    except FreshkbError as exc:
        get_run_logger().error("Weaviate could not be started: %s", exc)


def store_unreachable(settings: Settings) -> bool:
    """True when the Weaviate freshkb writes to does not answer: worth trying again later."""
    return not server.status(settings).running


def announce_stale_sources(settings: Settings) -> list[str]:
    """Emit `freshkb.source.stale` for every declared source that is stale; their names."""
    declared = load_sources(settings.config_file)
    ledger = Ledger(settings.ledger_database_url)
    try:
        states = ledger.states(now=datetime.now(UTC), declared=declared)
    finally:
        ledger.close()
    names = {source.name for source in declared}
    stale = [s for s in states if s.name in names and s.state is FreshnessState.STALE]
    for state in stale:
        emit_event(
            event=STALE_EVENT,
            resource={
                "prefect.resource.id": f"freshkb.source.{state.name}",
                "prefect.resource.name": state.name,
            },
            related=_deployment_of(state.name),
            payload=_stale_payload(state),
        )
    if stale:
        get_run_logger().warning("stale sources: %s", ", ".join(s.name for s in stale))
    return [state.name for state in stale]


def _deployment_of(source: str) -> list[dict[str, str]]:
    """The source's deployment as a related resource, so an automation can re-run it."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(f"{SOURCE_FLOW}/{source}")
        except ObjectNotFound:
            return []
    return [
        {
            "prefect.resource.id": f"prefect.deployment.{deployment.id}",
            "prefect.resource.role": "deployment",
            "prefect.resource.name": deployment.name,
        }
    ]


def _stale_payload(state: SourceFreshness) -> dict[str, object]:
    return {
        "source": state.name,
        "age_seconds": state.age_seconds,
        "sla_seconds": state.sla_seconds,
        "last_success_at": None if state.last_success_at is None else str(state.last_success_at),
        "reasons": list(state.reasons),
    }


def _settings(config_file: str | None) -> Settings:
    return active_settings(Settings(config_file=Path(config_file)) if config_file else Settings())
