"""The freshness policy: from what is known of a source's syncs, may answers use its data?

Staleness is never stored: it is computed from the clock at read time, so a source whose flow
simply stops running turns stale by itself. The states rank never synced > stale > failed >
fresh: a stale source is stale whatever its last run did, and a failed run only matters while
the last good sync is still within its SLA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from freshkb.core.durations import format_duration
from freshkb.core.sources import SourceConfig


class FreshnessState(StrEnum):
    """What the answer path may assume about a source's data."""

    FRESH = "fresh"
    STALE = "stale"
    FAILED = "failed"
    NEVER_SYNCED = "never synced"


@dataclass(frozen=True)
class SyncHistory:
    """What the ledger knows of one source's syncs: the policy's whole input besides the clock."""

    name: str
    kind: str
    owner: str
    sla_seconds: float | None
    record_max_age_seconds: float | None
    last_attempt_at: datetime | None
    last_status: str | None  # running | completed | failed
    last_error: str | None
    last_flow_run_id: str | None
    last_success_at: datetime | None
    last_success_flow_run_id: str | None
    newest_record_at: datetime | None
    validation: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)


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


def assess(history: SyncHistory, now: datetime) -> SourceFreshness:
    """Freshness of one source as of `now`: never synced > stale > failed > fresh."""
    last_success = history.last_success_at
    age = None if last_success is None else (now - last_success).total_seconds()
    failed = history.last_status == "failed"
    stale_reasons = _stale_reasons(history, age, now)
    failure_reasons = [f"last run failed: {history.last_error}"] if failed else []
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
        name=history.name,
        kind=history.kind,
        owner=history.owner,
        state=state,
        checked_at=now,
        sla_seconds=history.sla_seconds,
        age_seconds=age,
        last_success_at=last_success,
        last_attempt_at=history.last_attempt_at,
        last_status=history.last_status,
        last_error=history.last_error,
        flow_run_id=history.last_success_flow_run_id or history.last_flow_run_id,
        record_max_age_seconds=history.record_max_age_seconds,
        newest_record_at=history.newest_record_at,
        validation=history.validation,
        counts=history.counts,
        reasons=tuple(reasons),
    )


def never_synced(source: SourceConfig, now: datetime) -> SourceFreshness:
    """Freshness of a declared source the ledger has never seen."""
    return SourceFreshness(
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


def _stale_reasons(history: SyncHistory, age: float | None, now: datetime) -> list[str]:
    """Why a source that synced is stale: its last sync or its newest record is too old."""
    reasons: list[str] = []
    sla = history.sla_seconds
    if age is not None and sla is not None and age > sla:
        reasons.append(
            f"last successful sync {format_duration(age)} ago, "
            f"older than its SLA of {format_duration(sla)}"
        )
    record_sla = history.record_max_age_seconds
    newest = history.newest_record_at
    if history.last_success_at is not None and record_sla is not None and newest is not None:
        record_age = (now - newest).total_seconds()
        if record_age > record_sla:
            reasons.append(
                f"newest record updated {format_duration(record_age)} ago, "
                f"older than its SLA of {format_duration(record_sla)}"
            )
    return reasons


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
