"""The freshness ledger: per source, when it was last synced with passing validation.

A SQL database through SQLAlchemy, SQLite in the data directory by default (any SQLAlchemy URL,
such as PostgreSQL, through `ledger_url`). Chosen over a Weaviate collection because the answer
service reads it on every request: one indexed primary-key read, transactional updates from
concurrent flow runs, no vector index to carry, and it still answers when Weaviate is the thing
that is down (so `freshkb status` can say so).

The ledger stores rows; what they mean for answers (fresh, stale, failed) is the freshness
policy's to say (freshkb.validation.freshness), computed from the clock at read time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from freshkb.core.errors import TransientError
from freshkb.core.report import RunReport
from freshkb.core.sources import SourceConfig
from freshkb.core.sql import as_utc, display_url, sql_engine, upsert
from freshkb.validation.freshness import SourceFreshness, SyncHistory, assess, never_synced

metadata = sa.MetaData()

sources_table = sa.Table(
    "source_freshness",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(256), nullable=False, default=""),
    sa.Column("sla_seconds", sa.Float, nullable=True),
    sa.Column("record_max_age_seconds", sa.Float, nullable=True),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_status", sa.String(16), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_flow_run_id", sa.String(64), nullable=True),
    sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_success_flow_run_id", sa.String(64), nullable=True),
    sa.Column("last_validation", sa.Text, nullable=True),
    sa.Column("counts", sa.Text, nullable=True),
    sa.Column("newest_record_at", sa.DateTime(timezone=True), nullable=True),
)

runs_table = sa.Table(
    "ingest_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False, index=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("report", sa.Text, nullable=True),
)

COUNT_FIELDS = (
    "documents_seen",
    "documents_new",
    "documents_changed",
    "documents_unchanged",
    "documents_deleted",
    "documents_failed",
    "objects_written",
    "objects_deleted",
)


class LedgerUnavailable(TransientError):
    """The freshness ledger cannot be opened or written: locked, read-only, or its server down."""


def ledger_unavailable(url: str, exc: BaseException, consequence: str = "") -> LedgerUnavailable:
    """The error that names the ledger (never its password), the cause, what it means, the fix."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
    reason = cause[0]
    if "locked" in reason:
        fix = "let the process holding its lock finish (a long transaction, a backup, a shell)"
    elif "readonly" in reason or "read-only" in reason:
        fix = "make the database file and its folder writable for freshkb"
    elif "unable to open" in reason:
        fix = "check that the database file's folder exists and freshkb may write there"
    else:
        fix = "start its database server, or point FRESHKB_LEDGER_URL at a reachable one"
    return LedgerUnavailable(
        f"the freshness ledger at {display_url(url)} is unavailable ({reason})"
        + (f"; {consequence}" if consequence else "")
        + f". Fix: {fix} (FRESHKB_LEDGER_URL names the ledger), then rerun"
    )


@dataclass(frozen=True)
class IngestRun:
    """One ingest run of a source as the ledger recorded it."""

    id: int
    source: str
    flow_run_id: str | None
    started_at: datetime
    finished_at: datetime | None
    status: str  # running | completed | failed
    error: str | None
    report: dict[str, Any] = field(default_factory=dict)  # the run report as recorded (JSON)


class Ledger:
    """Reads and writes the freshness ledger."""

    def __init__(self, url: str):
        self.engine = sql_engine(url, metadata)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    # -- writes by ingest runs ----------------------------------------------------------

    def record_attempt(self, source: SourceConfig, flow_run_id: str, started_at: datetime) -> int:
        """A run of `source` has started; returns the run's id in the ledger."""
        values = {
            "kind": source.kind.value,
            "owner": source.owner,
            "sla_seconds": source.freshness.max_age_seconds,
            "record_max_age_seconds": source.freshness.record_max_age_seconds,
            "last_attempt_at": started_at,
            "last_status": "running",
            "last_flow_run_id": flow_run_id,
        }
        with self.engine.begin() as connection:
            # One statement, not an update then an insert: two workers starting the first
            # run of a source at once would both find no row, and the second insert would fail.
            upsert(connection, sources_table, [{"name": source.name, **values}])
            run = connection.execute(
                sa.insert(runs_table).values(
                    source=source.name,
                    flow_run_id=flow_run_id,
                    started_at=started_at,
                    status="running",
                )
            )
            return int(run.inserted_primary_key[0])  # type: ignore[index]

    def record_result(
        self,
        run_id: int,
        report: RunReport,
        finished_at: datetime,
        newest_record_at: datetime | None = None,
    ) -> None:
        """A run has ended: a completed one moves `last_success_at`, a failed one only says so."""
        data = report.to_dict()
        values: dict[str, Any] = {
            "last_status": report.status,
            "last_error": report.error,
            "last_validation": json.dumps(data["validation"], default=str),
        }
        if report.status == "completed":
            values |= {
                "last_success_at": finished_at,
                "last_success_flow_run_id": report.flow_run_id,
                "counts": json.dumps({name: getattr(report, name) for name in COUNT_FIELDS}),
            }
            if newest_record_at is not None:
                values["newest_record_at"] = newest_record_at
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(sources_table).where(sources_table.c.name == report.source).values(values)
            )
            connection.execute(
                sa.update(runs_table)
                .where(runs_table.c.id == run_id)
                .values(
                    finished_at=finished_at,
                    status=report.status,
                    error=report.error,
                    report=json.dumps(data, default=str),
                )
            )

    def cap_last_success(self, kind: str, at: datetime) -> None:
        """After a rollback: the restored data of `kind` is no newer than `at`."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(sources_table)
                .where(sources_table.c.kind == kind, sources_table.c.last_success_at > at)
                .values(last_success_at=at)
            )

    # -- reads by `freshkb status` and the answer path ---------------------------------

    def states(
        self, now: datetime | None = None, declared: Iterable[SourceConfig] = ()
    ) -> list[SourceFreshness]:
        """Every source in the ledger, plus declared ones that never ran, as of `now`."""
        now = now or datetime.now(UTC)
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(sources_table)).mappings().all()
        states = {row["name"]: assess(_history(row), now) for row in rows}
        for source in declared:
            if source.name not in states:
                states[source.name] = never_synced(source, now)
        return sorted(states.values(), key=lambda state: state.name)

    def state(self, name: str, now: datetime | None = None) -> SourceFreshness | None:
        """One source's freshness, or None if the ledger has never seen it."""
        with self.engine.connect() as connection:
            row = (
                connection.execute(sa.select(sources_table).where(sources_table.c.name == name))
                .mappings()
                .first()
            )
        return None if row is None else assess(_history(row), now or datetime.now(UTC))

    def runs(self, source: str, limit: int = 20) -> list[IngestRun]:
        """The latest runs of a source, newest first."""
        with self.engine.connect() as connection:
            rows = (
                connection.execute(
                    sa.select(runs_table)
                    .where(runs_table.c.source == source)
                    .order_by(runs_table.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [_run(row) for row in rows]


def _history(row: sa.RowMapping) -> SyncHistory:
    """A source's row as the freshness policy's input."""
    return SyncHistory(
        name=row["name"],
        kind=row["kind"],
        owner=row["owner"] or "",
        sla_seconds=row["sla_seconds"],
        record_max_age_seconds=row["record_max_age_seconds"],
        last_attempt_at=as_utc(row["last_attempt_at"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        last_flow_run_id=row["last_flow_run_id"],
        last_success_at=as_utc(row["last_success_at"]),
        last_success_flow_run_id=row["last_success_flow_run_id"],
        newest_record_at=as_utc(row["newest_record_at"]),
        validation=json.loads(row["last_validation"] or "{}"),
        counts=json.loads(row["counts"] or "{}"),
    )


def _run(row: sa.RowMapping) -> IngestRun:
    """A run's row as a record."""
    return IngestRun(
        id=int(row["id"]),
        source=row["source"],
        flow_run_id=row["flow_run_id"],
        started_at=as_utc(row["started_at"]),
        finished_at=as_utc(row["finished_at"]),
        status=row["status"],
        error=row["error"],
        report=json.loads(row["report"] or "{}"),
    )
