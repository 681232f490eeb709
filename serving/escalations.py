"""Escalations to a human and feedback on answers, kept durably in SQL (SQLite by default).

They share the database of the freshness ledger: one file of operational state per
installation, any SQLAlchemy URL in production. A resolved escalation carries the human's
answer, and can be exported as an evaluation case (question, truth, citations).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from freshkb.core.errors import ConfigError
from freshkb.core.sql import as_utc, sql_engine

metadata = sa.MetaData()

escalations_table = sa.Table(
    "escalations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("customer_id", sa.String(128), nullable=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("context", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("resolved_by", sa.String(128), nullable=True),
    sa.Column("human_answer", sa.Text, nullable=True),
)

feedback_table = sa.Table(
    "answer_feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("answer_id", sa.String(36), nullable=False, index=True),
    sa.Column("helpful", sa.Boolean, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
)


@dataclass(frozen=True)
class Escalation:
    """A question handed to a human, with what the system saw when it gave up."""

    id: str
    created_at: datetime
    question: str
    customer_id: str | None
    mode: str
    reasons: list[str]
    context: list[dict[str, Any]]
    status: str  # open | resolved
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    human_answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "question": self.question,
            "customer_id": self.customer_id,
            "mode": self.mode,
            "reasons": self.reasons,
            "context": self.context,
            "status": self.status,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "resolved_by": self.resolved_by,
            "human_answer": self.human_answer,
        }


class EscalationStore:
    """Escalations and feedback in one SQL database."""

    def __init__(self, url: str):
        self.engine = sql_engine(url, metadata)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def escalate(
        self,
        question: str,
        customer_id: str | None,
        mode: str,
        reasons: list[str],
        context: list[dict[str, Any]],
    ) -> Escalation:
        """Store a new open escalation and return it."""
        item = Escalation(
            id=str(uuid.uuid4()),
            created_at=datetime.now(UTC),
            question=question,
            customer_id=customer_id,
            mode=mode,
            reasons=reasons,
            context=context,
            status="open",
        )
        with self.engine.begin() as connection:
            connection.execute(
                sa.insert(escalations_table).values(
                    id=item.id,
                    created_at=item.created_at,
                    question=question,
                    customer_id=customer_id,
                    mode=mode,
                    reasons=json.dumps(reasons),
                    context=json.dumps(context, default=str),
                    status="open",
                )
            )
        return item

    def find(self, status: str | None = None, limit: int = 100) -> list[Escalation]:
        """Escalations, newest first, optionally only `open` or `resolved` ones."""
        query = sa.select(escalations_table).order_by(escalations_table.c.created_at.desc())
        if status:
            query = query.where(escalations_table.c.status == status)
        with self.engine.connect() as connection:
            rows = connection.execute(query.limit(limit)).mappings().all()
        return [_escalation(dict(row)) for row in rows]

    def get(self, escalation_id: str) -> Escalation | None:
        """One escalation by id."""
        with self.engine.connect() as connection:
            row = (
                connection.execute(
                    sa.select(escalations_table).where(escalations_table.c.id == escalation_id)
                )
                .mappings()
                .first()
            )
        return None if row is None else _escalation(dict(row))

    def resolve(self, escalation_id: str, answer: str, resolved_by: str) -> Escalation:
        """Record the human's answer; ConfigError if there is no such escalation."""
        with self.engine.begin() as connection:
            updated = connection.execute(
                sa.update(escalations_table)
                .where(escalations_table.c.id == escalation_id)
                .values(
                    status="resolved",
                    resolved_at=datetime.now(UTC),
                    resolved_by=resolved_by,
                    human_answer=answer,
                )
            )
        if updated.rowcount == 0:
            raise ConfigError(f"no escalation {escalation_id!r}; list them with `escalations list`")
        found = self.get(escalation_id)
        assert found is not None
        return found

    def export_cases(self) -> list[dict[str, Any]]:
        """Resolved escalations as evaluation cases: question, truth, customer, sources."""
        return [
            {
                "question": item.question,
                "truth": item.human_answer,
                "customer_id": item.customer_id,
                "escalation_id": item.id,
                "reasons": item.reasons,
                "context_chunk_ids": [c.get("chunk_id") for c in item.context],
            }
            for item in self.find(status="resolved", limit=100_000)
        ]

    def add_feedback(self, answer_id: str, helpful: bool, comment: str | None) -> int:
        """Store feedback on an answer; returns its id."""
        with self.engine.begin() as connection:
            result = connection.execute(
                sa.insert(feedback_table).values(
                    created_at=datetime.now(UTC),
                    answer_id=answer_id,
                    helpful=helpful,
                    comment=comment,
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def feedback(self, answer_id: str | None = None) -> list[dict[str, Any]]:
        """Stored feedback, optionally for one answer."""
        query = sa.select(feedback_table).order_by(feedback_table.c.id)
        if answer_id:
            query = query.where(feedback_table.c.answer_id == answer_id)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings().all()]


def _escalation(row: dict[str, Any]) -> Escalation:
    created = as_utc(row["created_at"])
    assert created is not None
    return Escalation(
        id=row["id"],
        created_at=created,
        question=row["question"],
        customer_id=row["customer_id"],
        mode=row["mode"],
        reasons=json.loads(row["reasons"]),
        context=json.loads(row["context"]),
        status=row["status"],
        resolved_at=as_utc(row["resolved_at"]),
        resolved_by=row["resolved_by"],
        human_answer=row["human_answer"],
    )
