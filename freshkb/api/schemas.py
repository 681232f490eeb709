"""What every route takes and gives, as pydantic models: the OpenAPI page documents them and
FastAPI checks each response against its model.

Response fields mirror the `to_dict()` forms of the service's results field for field, so the
JSON a client reads is the same whether it comes through a model or not; times stay ISO 8601
strings as those forms write them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from freshkb.store.protocol import SearchHit

FreshnessStateName = Literal["fresh", "stale", "failed", "never synced"]

# -- requests -----------------------------------------------------------------------------------

# Text that reaches SQL, Weaviate and the LLM: no NUL bytes (PostgreSQL refuses them), no
# control characters but tab and line breaks, no lone surrogates (they cannot be encoded).
_LINE_BREAKS = {"\t", "\n", "\r"}


def _unicode_text(value: str) -> str:
    """Refuse what no store or model should receive; whitespace and line breaks are fine."""
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes (\\x00)")
    control = next((c for c in value if (c < " " and c not in _LINE_BREAKS) or c == "\x7f"), None)
    if control is not None:
        raise ValueError(f"must not contain control characters (found {control!r})")
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("must be valid Unicode (found a lone surrogate)")
    return value


def _written(value: str) -> str:
    """Free text that must say something."""
    if not value.strip():
        raise ValueError("must not be blank")
    return _unicode_text(value)


def _identifier(value: str) -> str:
    """An id: printable, no line breaks or surrounding spaces."""
    if any(c in _LINE_BREAKS for c in value) or value != value.strip():
        raise ValueError("must not contain line breaks, tabs or surrounding spaces")
    return _unicode_text(value)


Text = Annotated[str, AfterValidator(_unicode_text)]
Written = Annotated[str, AfterValidator(_written)]
Identifier = Annotated[str, AfterValidator(_identifier)]


class AnswerRequest(BaseModel):
    """A customer's question."""

    model_config = ConfigDict(extra="forbid")

    question: Written = Field(min_length=1, max_length=2000)
    customer_id: Identifier | None = Field(default=None, min_length=1, max_length=128)
    k: int = Field(default=5, ge=1, le=20)


class ResolveRequest(BaseModel):
    """A human's answer to an escalated question."""

    model_config = ConfigDict(extra="forbid")

    answer: Written = Field(min_length=1, max_length=10_000)
    resolved_by: Identifier = Field(default="agent", min_length=1, max_length=128)


class FeedbackRequest(BaseModel):
    """Whether an answer helped."""

    model_config = ConfigDict(extra="forbid")

    answer_id: Identifier = Field(min_length=1, max_length=64)
    helpful: bool
    comment: Text | None = Field(default=None, max_length=2000)


# -- answers ------------------------------------------------------------------------------------


class CitedPassage(BaseModel):
    """A passage an answer cites under its label (S1, S2, ...), and where it came from."""

    chunk_id: str
    label: str
    source: str
    document: str
    title: str
    page: int | None
    ingested_at: str | None
    flow_run_id: str | None


class LeftOutSource(BaseModel):
    """A source whose data was left out of the answer, and why."""

    name: str
    kind: str
    state: FreshnessStateName
    age: str | None
    sla: str | None
    reasons: list[str]


class AnswerResponse(BaseModel):
    """An answer; `mode` says how it was made."""

    answer_id: str
    answer: str
    mode: Literal["normal", "degraded", "escalated", "refused"]
    citations: list[CitedPassage]
    stale_sources: list[LeftOutSource]
    reasons: list[str]
    timings_ms: dict[str, float] = Field(description="milliseconds spent per stage")
    tokens: dict[str, int] = Field(description="LLM tokens: prompt and completion")
    escalation_id: str | None
    model: str = Field(description="the LLM asked (configured model name)")
    prompt_version: str = Field(description="the system prompt's version")
    embedding_model: str = Field(description="the model that embedded the question")
    cost_usd: float = Field(description="estimated LLM cost of this answer, USD")
    best_relevance: float | None = Field(
        description="relevance of the best usable passage; null when retrieval did not run"
    )
    signals: list[str] = Field(
        description="hallucination signals: no_citations, unsupported_sentence, "
        "contradicts_sources, low_retrieval_confidence"
    )


class RetrievedPassage(BaseModel):
    """One retrieved chunk or record."""

    chunk_id: str
    text: str
    source: str
    document: str
    title: str
    page: int | None
    score: float = Field(description="hybrid search score (relative to this query)")
    relevance: float | None = Field(description="cosine of the passage with the query")
    ingested_at: str | None
    flow_run_id: str | None

    @classmethod
    def of(cls, hit: SearchHit) -> RetrievedPassage:
        """The passage as the API shows a search hit."""
        return cls(
            chunk_id=hit.uuid,
            text=hit.text,
            source=hit.source,
            document=hit.document_key,
            title=hit.title,
            page=hit.page,
            score=hit.score,
            relevance=hit.relevance,
            ingested_at=hit.ingested_at.isoformat() if hit.ingested_at else None,
            flow_run_id=hit.flow_run_id,
        )


class SearchResponse(BaseModel):
    """Retrieval only: the hits from fresh sources and the names of the sources left out."""

    hits: list[RetrievedPassage]
    stale_sources: list[str]


class SourceStatus(BaseModel):
    """One source's freshness: state, age against its SLA, last runs, and why."""

    name: str
    kind: str
    owner: str
    state: FreshnessStateName
    checked_at: str | None
    age_seconds: float | None
    age: str | None
    sla_seconds: float | None
    sla: str | None
    last_success_at: str | None
    last_attempt_at: str | None
    last_status: str | None
    last_error: str | None
    flow_run_id: str | None
    newest_record_at: str | None
    record_max_age_seconds: float | None
    validation: dict[str, Any]
    counts: dict[str, Any]
    reasons: list[str]


# -- escalations and feedback -----------------------------------------------------------------


class EscalationRecord(BaseModel):
    """A question handed to a human, what the system saw, and the human answer once resolved."""

    id: str
    created_at: str
    question: str
    customer_id: str | None
    mode: str
    reasons: list[str]
    context: list[dict[str, Any]] = Field(description="the passages the system had")
    status: Literal["open", "resolved"]
    resolved_at: str | None
    resolved_by: str | None
    human_answer: str | None


class FeedbackReceipt(BaseModel):
    """The stored feedback's id."""

    id: int


# -- the answer log -----------------------------------------------------------------------------


class LoggedCitation(BaseModel):
    """A cited chunk as the answer log keeps it, with the flow run that ingested it."""

    chunk_id: str
    source: str
    document: str
    page: int | None
    flow_run_id: str | None
    ingested_at: str | None


class FeedbackItem(BaseModel):
    """Feedback given on an answer."""

    id: int
    created_at: str
    helpful: bool
    comment: str | None


class CredentialUsed(BaseModel):
    """The credential that asked, by fingerprint (never the token), and its scope."""

    credential: str
    scope: str


class LoggedAnswerRecord(BaseModel):
    """One logged answer, joined by its id to its feedback, escalation and credential."""

    answer_id: str
    answered_at: str
    question: str | None = Field(description="null when only the question's hash is kept")
    question_hash: str
    customer_hash: str | None
    mode: str
    answer_chars: int
    answer: str | None = Field(description="the answer as served; null when only hashes are kept")
    citations: list[LoggedCitation]
    model: str
    prompt_version: str
    embedding_model: str
    best_relevance: float | None
    latency_ms: float
    timings_ms: dict[str, float]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    signals: list[str]
    reasons: list[str]
    escalation_id: str | None
    llm_seconds: float
    feedback: list[FeedbackItem]
    escalation: EscalationRecord | None
    credential: CredentialUsed | None


# -- health -------------------------------------------------------------------------------------


class HealthStatus(BaseModel):
    """Liveness."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Readiness of each dependency; ready when Weaviate and the ledger answer.

    A check that failed holds the reason as text instead of `true`.
    """

    # Dependencies added later are reported without a change here.
    model_config = ConfigDict(extra="allow")

    weaviate: bool | str | None = None
    ledger: bool | str | None = None
    llm: bool | str | None = None
    llm_circuit_open: bool | None = None
    ready: bool
