"""Which credential acted for which customer, for every answer (in the operational database,
beside escalations and feedback, joinable on the answer id)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from freshkb.core.sql import as_utc, grouped_inserts, sql_engine

metadata = sa.MetaData()

answer_credentials = sa.Table(
    "answer_credentials",
    metadata,
    sa.Column("answer_id", sa.String(36), primary_key=True),
    sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("credential", sa.String(64), nullable=False, index=True),  # a fingerprint
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("customer_id", sa.String(128), nullable=True),
    sa.Column("mode", sa.String(16), nullable=False),
)


@dataclass(frozen=True)
class ActedFor:
    """One answer: the credential (by fingerprint, never the token) and the customer."""

    answer_id: str
    answered_at: datetime
    credential: str
    scope: str
    customer_id: str | None
    mode: str


class AnswerAudit:
    """Records and reads which credential acted for which customer."""

    def __init__(self, url: str):
        self.engine = sql_engine(url, metadata)
        self._writes = grouped_inserts(self.engine, answer_credentials)  # shared transactions

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def record(self, entry: ActedFor) -> None:
        """Keep one answer's credential and customer (committed when this returns)."""
        self._writes.submit(dict(entry.__dict__))

    def find(self, answer_id: str) -> ActedFor | None:
        """The record of one answer, if any."""
        query = sa.select(answer_credentials).where(answer_credentials.c.answer_id == answer_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        if row is None:
            return None
        return ActedFor(**{**row, "answered_at": as_utc(row["answered_at"])})


def now() -> datetime:
    """The time an answer is recorded at."""
    return datetime.now(UTC)
