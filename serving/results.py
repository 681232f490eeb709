"""What an answer carries back: the text, its mode, citations, the sources left out and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from freshkb.core.durations import format_duration
from freshkb.store.protocol import SearchHit
from freshkb.validation.freshness import SourceFreshness


@dataclass(frozen=True)
class Citation:
    """Where a cited passage came from."""

    chunk_id: str
    label: str
    source: str
    document: str
    title: str
    page: int | None
    ingested_at: str | None
    flow_run_id: str | None

    @classmethod
    def of(cls, label: str, hit: SearchHit) -> Citation:
        """The citation of a retrieved hit under its label (S1, S2, ...)."""
        return cls(
            chunk_id=hit.uuid,
            label=label,
            source=hit.source,
            document=hit.document_key,
            title=hit.title,
            page=hit.page,
            ingested_at=hit.ingested_at.isoformat() if hit.ingested_at else None,
            flow_run_id=hit.flow_run_id,
        )


@dataclass(frozen=True)
class StaleSource:
    """A source whose data was left out of the answer, and why."""

    name: str
    kind: str
    state: str
    age: str | None
    sla: str | None
    reasons: list[str]

    @classmethod
    def of(cls, state: SourceFreshness) -> StaleSource:
        """How a source left out of the answer is reported."""
        return cls(
            name=state.name,
            kind=state.kind,
            state=state.state.value,
            age=None if state.age_seconds is None else format_duration(state.age_seconds),
            sla=None if state.sla_seconds is None else format_duration(state.sla_seconds),
            reasons=list(state.reasons),
        )


def stale_note(stale: list[StaleSource]) -> str:
    """The sentence an answer ends with when sources were left out."""
    parts = [
        f"{s.name} ({s.state}" + (f", last synced {s.age} ago, SLA {s.sla}" if s.age else "") + ")"
        for s in stale
    ]
    return "Note: these sources are out of date and were not used: " + "; ".join(parts) + "."


@dataclass
class AnswerResult:
    """Everything `POST /v1/answer` returns."""

    answer_id: str
    answer: str
    mode: str  # normal | degraded | escalated | refused
    citations: list[Citation] = field(default_factory=list)
    stale_sources: list[StaleSource] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "completion": 0})
    escalation_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return asdict(self)
