"""Every answer, logged: what was asked (per the privacy setting), how it was answered, from
which chunks and ingest runs, by which model and prompt, how fast, at what cost, and the
hallucination signals it raised.

One row per answer in the operational database (beside escalations, feedback and the
credential audit), keyed by the answer id that feedback, escalations and reviews join on.
Rows older than the retention period are deleted by `prune`. `AnswerJournal` is how the answer
service writes it: a write that fails is logged and counted, never raised, so the log can
never cost a customer an answer; `answer_detail` joins one answer to its feedback, its
escalation and the credential that asked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from freshkb.core.sql import as_utc, grouped_inserts, sql_engine
from freshkb.serving.audit import ActedFor, AnswerAudit
from freshkb.serving.escalations import Escalation, EscalationStore
from freshkb.serving.results import AnswerResult

log = logging.getLogger(__name__)
PRUNE_EVERY = timedelta(hours=1)

QuestionPrivacy = Literal["text", "hash"]  # keep the question's text, or only its hash

metadata = sa.MetaData()

answer_log_table = sa.Table(
    "answer_log",
    metadata,
    sa.Column("answer_id", sa.String(36), primary_key=True),
    sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("question", sa.Text, nullable=True),  # None when privacy is "hash"
    sa.Column("question_hash", sa.String(64), nullable=False),
    sa.Column("question_vector", sa.LargeBinary, nullable=True),  # float32, for drift
    sa.Column("customer_hash", sa.String(64), nullable=True),
    sa.Column("mode", sa.String(16), nullable=False, index=True),
    sa.Column("answer_chars", sa.Integer, nullable=False),
    # The answer as served, kept like the question (only with privacy "text"): answers can
    # repeat customer data, and reviewers need to read them.
    sa.Column("answer", sa.Text, nullable=True),
    sa.Column("citations", sa.Text, nullable=False),  # JSON list
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("prompt_version", sa.String(64), nullable=False),
    sa.Column("embedding_model", sa.String(256), nullable=False),
    sa.Column("best_relevance", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("timings_ms", sa.Text, nullable=False),  # JSON object
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("signals", sa.Text, nullable=False),  # JSON list of hallucination signal names
    sa.Column("reasons", sa.Text, nullable=False),  # JSON list
    sa.Column("escalation_id", sa.String(36), nullable=True),
    sa.Column("llm_seconds", sa.Float, nullable=False, default=0.0),  # the call, for GPU cost
)


def digest(text: str, key: bytes = b"") -> str:
    """The hex digest the log keeps in place of a question or customer id: HMAC-SHA-256 under
    the installation's key, so a short customer id cannot be recovered by hashing guesses
    (plain SHA-256 without a key, for tests and tools that only compare digests)."""
    if key:
        return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


HASH_KEY_FILE = "answer-log-key"


def hash_key(configured: str | None, data_dir: Path) -> bytes:
    """The key of the log's digests: the configured one (the same on every replica), else one
    made on first use in the data directory, owner-only."""
    if configured:
        return configured.encode("utf-8")
    path = data_dir / HASH_KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip().encode("utf-8")


@dataclass(frozen=True)
class LoggedAnswer:
    """One row of the answer log.

    `citations` holds one dict per citation: chunk_id, source, document, page, flow_run_id.
    `signals` holds hallucination signal names (see serving/signals.py when present), e.g.
    "no_citations", "unsupported_sentence", "low_retrieval_confidence".
    """

    answer_id: str
    answered_at: datetime
    question: str | None
    question_hash: str
    customer_hash: str | None
    mode: str
    answer_chars: int
    citations: list[dict[str, Any]]
    model: str
    prompt_version: str
    embedding_model: str
    best_relevance: float | None
    latency_ms: float
    timings_ms: dict[str, float]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    signals: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    escalation_id: str | None = None
    question_vector: np.ndarray | None = None
    llm_seconds: float = 0.0
    answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (without the vector)."""
        row = {k: v for k, v in self.__dict__.items() if k != "question_vector"}
        return {**row, "answered_at": self.answered_at.isoformat()}


_JSON_COLUMNS = ("citations", "timings_ms", "signals", "reasons")


def _to_row(entry: LoggedAnswer) -> dict[str, Any]:
    row = dict(entry.__dict__)
    for name in _JSON_COLUMNS:
        row[name] = json.dumps(row[name])
    vector = entry.question_vector
    row["question_vector"] = None if vector is None else np.asarray(vector, "<f4").tobytes()
    return row


def _from_row(row: Any) -> LoggedAnswer:
    values = dict(row)
    for name in _JSON_COLUMNS:
        values[name] = json.loads(values[name])
    raw = values["question_vector"]
    values["question_vector"] = None if raw is None else np.frombuffer(raw, "<f4")
    values["answered_at"] = as_utc(values["answered_at"])
    return LoggedAnswer(**values)


class AnswerLog:
    """Writes and reads the answer log."""

    def __init__(self, url: str, retention_days: int = 90):
        self.engine = sql_engine(url, metadata)
        self.retention = timedelta(days=retention_days)
        self._writes = grouped_inserts(self.engine, answer_log_table)  # shared transactions

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def record(self, entry: LoggedAnswer) -> None:
        """Keep one answer (committed when this returns)."""
        self._writes.submit(_to_row(entry))

    def find(self, answer_id: str) -> LoggedAnswer | None:
        """One answer by id, if logged (and not yet pruned)."""
        query = sa.select(answer_log_table).where(answer_log_table.c.answer_id == answer_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return None if row is None else _from_row(row)

    def between(self, start: datetime, end: datetime | None = None) -> Iterator[LoggedAnswer]:
        """The answers logged in [start, end), oldest first."""
        table = answer_log_table
        query = sa.select(table).where(table.c.answered_at >= start)
        if end is not None:
            query = query.where(table.c.answered_at < end)
        with self.engine.connect() as connection:
            for row in connection.execute(query.order_by(table.c.answered_at)).mappings():
                yield _from_row(row)

    def prune(self, now: datetime | None = None) -> int:
        """Delete answers older than the retention period; how many went."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        query = sa.delete(answer_log_table).where(answer_log_table.c.answered_at < cutoff)
        with self.engine.begin() as connection:
            return connection.execute(query).rowcount or 0


def logged_answer(
    result: AnswerResult,
    question: str,
    customer_id: str | None,
    latency_seconds: float,
    questions: QuestionPrivacy = "text",
    key: bytes = b"",
) -> LoggedAnswer:
    """The log row of an answer: the question kept as text or only hashed, the customer id
    hashed, the citations with their chunks and the ingest runs that wrote them."""
    vector = result.trace.question_vector
    return LoggedAnswer(
        answer_id=result.answer_id,
        answered_at=datetime.now(UTC),
        question=question if questions == "text" else None,
        question_hash=digest(question, key),
        customer_hash=None if customer_id is None else digest(customer_id, key),
        mode=result.mode,
        answer_chars=len(result.answer),
        answer=result.answer if questions == "text" else None,
        citations=[
            {
                "chunk_id": c.chunk_id,
                "source": c.source,
                "document": c.document,
                "page": c.page,
                "flow_run_id": c.flow_run_id,
                "ingested_at": c.ingested_at,
            }
            for c in result.citations
        ],
        model=result.model,
        prompt_version=result.prompt_version,
        embedding_model=result.embedding_model,
        best_relevance=result.best_relevance,
        latency_ms=round(latency_seconds * 1000, 1),
        timings_ms=dict(result.timings_ms),
        prompt_tokens=result.tokens.get("prompt", 0),
        completion_tokens=result.tokens.get("completion", 0),
        cost_usd=result.cost_usd,
        signals=list(result.signals),
        reasons=list(result.reasons),
        escalation_id=result.escalation_id,
        question_vector=None if vector is None else np.asarray(vector, "<f4"),
        llm_seconds=result.trace.llm_seconds,
    )


class AnswerJournal:
    """Records every answer the service gives; see the module docstring.

    Rows past the retention period are pruned when the journal opens (the service's start) and
    then at most once per `prune_every`, by whichever answer comes due.
    """

    def __init__(
        self,
        log: AnswerLog,
        questions: QuestionPrivacy = "text",
        prune_every: timedelta = PRUNE_EVERY,
        key: bytes = b"",
    ):
        self.log = log
        self.questions = questions
        self.key = key
        self.prune_every = prune_every
        self.failures = 0  # writes that failed, for the metrics
        self._pruned_at: datetime | None = None
        self._lock = threading.Lock()
        self.prune_if_due()

    def record(
        self, result: AnswerResult, question: str, customer_id: str | None, latency_seconds: float
    ) -> bool:
        """Log one answer; False (a warning logged, the failure counted) when it could not be."""
        try:
            self.log.record(
                logged_answer(
                    result, question, customer_id, latency_seconds, self.questions, self.key
                )
            )
        except Exception as exc:  # whatever the cause, the customer still gets the answer
            with self._lock:
                self.failures += 1
            log.warning("answer %s was not logged: %s", result.answer_id, exc)
            return False
        self.prune_if_due()
        return True

    def prune_if_due(self, now: datetime | None = None) -> int:
        """Prune if `prune_every` has passed since the last prune; how many rows went."""
        now = now or datetime.now(UTC)
        with self._lock:
            if self._pruned_at is not None and now - self._pruned_at < self.prune_every:
                return 0
            self._pruned_at = now
        try:
            return self.log.prune(now)
        except SQLAlchemyError as exc:
            log.warning("the answer log could not be pruned: %s", exc)
            return 0

    def close(self) -> None:
        """Release the log's connection pool."""
        self.log.close()


@dataclass(frozen=True)
class FeedbackEntry:
    """Feedback given on an answer."""

    id: int
    created_at: datetime
    helpful: bool
    comment: str | None


@dataclass(frozen=True)
class AnswerDetail:
    """A logged answer with its feedback, its escalation and the credential that asked."""

    answer: LoggedAnswer
    feedback: list[FeedbackEntry]
    escalation: Escalation | None
    credential: ActedFor | None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form; the credential by fingerprint and scope only (its
        customer id stays hashed, as in the log)."""
        acted = self.credential
        return {
            **self.answer.to_dict(),
            "feedback": [
                {**asdict(item), "created_at": item.created_at.isoformat()}
                for item in self.feedback
            ],
            "escalation": None if self.escalation is None else self.escalation.to_dict(),
            "credential": None
            if acted is None
            else {"credential": acted.credential, "scope": acted.scope},
        }


def answer_detail(
    answer_id: str, log: AnswerLog, escalations: EscalationStore, audit: AnswerAudit | None
) -> AnswerDetail | None:
    """One logged answer joined, by its id, to its feedback, escalation and credential."""
    found = log.find(answer_id)
    if found is None:
        return None
    feedback = [
        FeedbackEntry(
            id=int(row["id"]),
            created_at=as_utc(row["created_at"]),
            helpful=bool(row["helpful"]),
            comment=row["comment"],
        )
        for row in escalations.feedback(answer_id)
    ]
    escalation = escalations.get(found.escalation_id) if found.escalation_id else None
    credential = audit.find(answer_id) if audit is not None else None
    return AnswerDetail(found, feedback, escalation, credential)
