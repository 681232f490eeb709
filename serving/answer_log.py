"""Every answer, logged: what was asked (per the privacy setting), how it was answered, from
which chunks and ingest runs, by which model and prompt, how fast, at what cost, and the
hallucination signals it raised.

One row per answer in the operational database (beside escalations, feedback and the
credential audit), keyed by the answer id that feedback, escalations and reviews join on.
Rows older than the retention period are deleted by `prune`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa

from freshkb.core.sql import as_utc, sql_engine

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
)


def digest(text: str) -> str:
    """The SHA-256 hex digest the log keeps in place of a question or customer id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def record(self, entry: LoggedAnswer) -> None:
        """Keep one answer."""
        with self.engine.begin() as connection:
            connection.execute(sa.insert(answer_log_table).values(**_to_row(entry)))

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
