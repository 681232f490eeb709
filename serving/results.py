"""What an answer carries back: the text, its mode, citations, the sources left out and why,
the model and prompt that wrote it, its cost and its hallucination signals; and the steps that
fill those in wherever the answer path ends (the sources left out, a quoted answer)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from freshkb.core.durations import format_duration
from freshkb.core.records import SourceKind
from freshkb.serving.answerability import Judgement
from freshkb.serving.answerer import Passage
from freshkb.store.protocol import SearchHit
from freshkb.validation.freshness import SourceFreshness

FRESHNESS_UNKNOWN = "freshness unknown"
FRESHNESS_UNKNOWN_NOTE = (
    "Note: we could not check how up to date our sources are right now, so parts of this "
    "answer may be out of date."
)


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
class AnswerTrace:
    """What the answer path measured for the answer log, beyond what the answer returns."""

    question_vector: list[float] | None = None  # the retrieval's own, so nothing embeds twice
    llm_seconds: float = 0.0  # the LLM call itself, without waiting for a slot
    answerability: Judgement | None = None  # whether the passages answer it, and the evidence


@dataclass
class AnswerResult:
    """Everything `POST /v1/answer` returns (and, in `trace`, what only the log keeps)."""

    answer_id: str
    answer: str
    mode: str  # normal | degraded | escalated | refused
    citations: list[Citation] = field(default_factory=list)
    stale_sources: list[StaleSource] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "completion": 0})
    escalation_id: str | None = None
    model: str = ""  # the LLM asked (settings.llm_model), even when it was not reached
    prompt_version: str = ""
    embedding_model: str = ""
    cost_usd: float = 0.0  # serving/costs.py
    best_relevance: float | None = None  # None: retrieval did not run
    signals: list[str] = field(default_factory=list)  # serving/signals.py
    trace: AnswerTrace = field(default_factory=AnswerTrace, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (without the trace)."""
        data = asdict(self)
        del data["trace"]
        return data


@dataclass(frozen=True)
class SourceSelection:
    """The sources one request may search and those left out, as the ledger says; when the
    ledger cannot be read, every source, with why their freshness is unknown."""

    fresh: list[str] | None  # None: no filter, every source is searched
    left_out: list[SourceFreshness]
    unknown: str | None = None


def note_left_out(
    result: AnswerResult, selection: SourceSelection, customer_id: str | None
) -> bool:
    """Name the sources left out; True when they include the customer's own records."""
    if selection.unknown:
        result.reasons.append(selection.unknown)
    left_out = selection.left_out
    result.stale_sources = [StaleSource.of(state) for state in left_out]
    if left_out:
        result.reasons.append(
            "left out stale or failed sources: "
            + ", ".join(f"{s.name} ({s.state.value})" for s in left_out)
        )
    customer_left_out = [s for s in left_out if s.kind == SourceKind.CUSTOMERS.value]
    own_records_stale = bool(customer_id and customer_left_out)
    if own_records_stale:
        result.reasons.append(
            "customer records are not fresh, so this answer avoids account-specific facts"
        )
    return own_records_stale


def disclaim_unknown_freshness(result: AnswerResult) -> AnswerResult:
    """An answer from sources of unknown freshness is degraded and says so (not escalated or
    refused ones: they state no facts)."""
    unknown = any(reason.startswith(FRESHNESS_UNKNOWN) for reason in result.reasons)
    if unknown and result.mode in ("normal", "degraded"):
        result.mode = "degraded"
        result.answer += "\n\n" + FRESHNESS_UNKNOWN_NOTE
    return result


def quote_passages(
    result: AnswerResult, passages: list[Passage], by_label: dict[str, SearchHit], lead: str
) -> AnswerResult:
    """Degraded answer without the LLM's words: the best passages, quoted, with citations."""
    best = by_label[passages[0].label].relevance or 0.0
    # Quote the best passage, and the second only if it is nearly as relevant.
    quoted = [
        p
        for p in passages[:2]
        if (by_label[p.label].relevance or 0.0) >= best - 0.1 or p is passages[0]
    ]
    lines = [lead]
    for passage in quoted:
        excerpt = " ".join(passage.text.split())
        if len(excerpt) > 600:
            excerpt = excerpt[:600].rsplit(" ", 1)[0] + " ..."
        lines.append(f'"{excerpt}" [{passage.label}]')
    result.mode = "degraded"
    result.answer = "\n\n".join(lines)
    if result.stale_sources:
        result.answer += "\n\n" + stale_note(result.stale_sources)
    result.citations = [Citation.of(p.label, by_label[p.label]) for p in quoted]
    return result
