"""The freshness ledger: per source, when it was last synced with passing validation.

A SQL database through SQLAlchemy, SQLite in the data directory by default (any SQLAlchemy URL,
such as PostgreSQL, through `ledger_url`). Chosen over a Weaviate collection because the answer
service reads it on every request: one indexed primary-key read, transactional updates from
concurrent flow runs, no vector index to carry, and it still answers when Weaviate is the thing
that is down (so `freshkb status` can say so).

Staleness is never stored: it is computed from the clock at read time, so a source whose flow
simply stops running turns stale by itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from freshkb.core.config import SourceConfig, format_duration

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


class FreshnessState(StrEnum):
    """What the answer path may assume about a source's data."""

    FRESH = "fresh"
    STALE = "stale"
    FAILED = "failed"
    NEVER_SYNCED = "never synced"


@dataclass(frozen=True)
class SourceFreshness:
    """One source's freshness at a moment, with the reasons for its state."""

    name: str
    kind: str
    owner: str
    state: FreshnessState
    checked_at: datetime
    sla_seconds: float | None
    age_seconds: float | None  # since the last successful validated sync
    last_success_at: datetime | None
    last_attempt_at: datetime | None
    last_status: str | None
    last_error: str | None
    flow_run_id: str | None
    record_max_age_seconds: float | None = None
    newest_record_at: datetime | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        """True when answers may use this source's data."""
        return self.state is FreshnessState.FRESH

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return {
            "name": self.name,
            "kind": self.kind,
            "owner": self.owner,
            "state": self.state.value,
            "checked_at": _iso(self.checked_at),
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 1),
            "age": None if self.age_seconds is None else format_duration(self.age_seconds),
            "sla_seconds": self.sla_seconds,
            "sla": None if self.sla_seconds is None else format_duration(self.sla_seconds),
            "last_success_at": _iso(self.last_success_at),
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_status": self.last_status,
            "last_error": self.last_error,
            "flow_run_id": self.flow_run_id,
            "newest_record_at": _iso(self.newest_record_at),
            "record_max_age_seconds": self.record_max_age_seconds,
            "validation": self.validation,
            "counts": self.counts,
            "reasons": list(self.reasons),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything freshkb stores is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def sql_engine(url: str) -> sa.Engine:
    """An engine for freshkb's operational database (SQLite file created if missing)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Ledger:
    """Reads and writes the freshness ledger."""

    def __init__(self, url: str):
        self.engine = sql_engine(url)
        metadata.create_all(self.engine)

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
            updated = connection.execute(
                sa.update(sources_table).where(sources_table.c.name == source.name).values(values)
            )
            if updated.rowcount == 0:
                connection.execute(sa.insert(sources_table).values(name=source.name, **values))
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
        report: dict[str, Any],
        finished_at: datetime,
        newest_record_at: datetime | None = None,
    ) -> None:
        """A run has ended: a completed one moves `last_success_at`, a failed one only says so."""
        succeeded = report["status"] == "completed"
        values: dict[str, Any] = {
            "last_status": report["status"],
            "last_error": report.get("error"),
            "last_validation": json.dumps(report.get("validation") or {}, default=str),
        }
        if succeeded:
            values |= {
                "last_success_at": finished_at,
                "last_success_flow_run_id": report.get("flow_run_id"),
                "counts": json.dumps({name: report.get(name, 0) for name in COUNT_FIELDS}),
            }
            if newest_record_at is not None:
                values["newest_record_at"] = newest_record_at
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(sources_table)
                .where(sources_table.c.name == report["source"])
                .values(values)
            )
            connection.execute(
                sa.update(runs_table)
                .where(runs_table.c.id == run_id)
                .values(
                    finished_at=finished_at,
                    status=report["status"],
                    error=report.get("error"),
                    report=json.dumps(report, default=str),
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
        states = {row["name"]: _state(dict(row), now) for row in rows}
        for source in declared:
            if source.name not in states:
                states[source.name] = SourceFreshness(
                    name=source.name,
                    kind=source.kind.value,
                    owner=source.owner,
                    state=FreshnessState.NEVER_SYNCED,
                    checked_at=now,
                    sla_seconds=source.freshness.max_age_seconds,
                    age_seconds=None,
                    last_success_at=None,
                    last_attempt_at=None,
                    last_status=None,
                    last_error=None,
                    flow_run_id=None,
                    record_max_age_seconds=source.freshness.record_max_age_seconds,
                    reasons=("never ingested: run `freshkb ingest " + source.name + "`",),
                )
        return sorted(states.values(), key=lambda state: state.name)

    def state(self, name: str, now: datetime | None = None) -> SourceFreshness | None:
        """One source's freshness, or None if the ledger has never seen it."""
        with self.engine.connect() as connection:
            row = (
                connection.execute(sa.select(sources_table).where(sources_table.c.name == name))
                .mappings()
                .first()
            )
        return None if row is None else _state(dict(row), now or datetime.now(UTC))

    def runs(self, source: str, limit: int = 20) -> list[dict[str, Any]]:
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
        return [dict(row) for row in rows]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the answer service read while a flow run writes; wait instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _state(row: dict[str, Any], now: datetime) -> SourceFreshness:
    """Freshness of one ledger row as of `now`: never synced > stale > failed > fresh."""
    last_success = _aware(row["last_success_at"])
    newest_record = _aware(row["newest_record_at"])
    sla = row["sla_seconds"]
    record_sla = row["record_max_age_seconds"]
    age = None if last_success is None else (now - last_success).total_seconds()
    failed = row["last_status"] == "failed"
    stale_reasons: list[str] = []
    if age is not None and sla is not None and age > sla:
        stale_reasons.append(
            f"last successful sync {format_duration(age)} ago, "
            f"older than its SLA of {format_duration(sla)}"
        )
    if last_success is not None and record_sla is not None and newest_record is not None:
        record_age = (now - newest_record).total_seconds()
        if record_age > record_sla:
            stale_reasons.append(
                f"newest record updated {format_duration(record_age)} ago, "
                f"older than its SLA of {format_duration(record_sla)}"
            )
    failure_reasons = [f"last run failed: {row['last_error']}"] if failed else []
    if last_success is None:
        state = FreshnessState.FAILED if failed else FreshnessState.NEVER_SYNCED
        never = [] if failed else ["no successful validated sync yet"]
        reasons = failure_reasons + never
    elif stale_reasons:
        state, reasons = FreshnessState.STALE, stale_reasons + failure_reasons
    elif failed:
        state, reasons = FreshnessState.FAILED, failure_reasons
    else:
        state, reasons = FreshnessState.FRESH, []
    return SourceFreshness(
        name=row["name"],
        kind=row["kind"],
        owner=row["owner"] or "",
        state=state,
        checked_at=now,
        sla_seconds=sla,
        age_seconds=age,
        last_success_at=last_success,
        last_attempt_at=_aware(row["last_attempt_at"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        flow_run_id=row["last_success_flow_run_id"] or row["last_flow_run_id"],
        record_max_age_seconds=record_sla,
        newest_record_at=newest_record,
        validation=json.loads(row["last_validation"] or "{}"),
        counts=json.loads(row["counts"] or "{}"),
        reasons=tuple(reasons),
    )
