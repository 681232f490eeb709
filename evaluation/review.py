"""Human review of logged answers: a queue of answers drawn from the answer log, reviewers'
marks, the marks exported as evaluation cases, and the hallucination rate they measure.

The queue lives in the operational database beside the answer log, feedback and escalations,
keyed by the answer id they all join on. `draw` queues a uniform random sample of a period's
answers plus every high-risk one; only the random draws count towards the measured
hallucination rate, so the estimate is not biased by the high-risk answers picked on purpose
(those are tallied separately).
"""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import sqlalchemy as sa

from freshkb.core.errors import FreshkbError
from freshkb.core.sql import as_utc, sql_engine
from freshkb.serving import escalations
from freshkb.serving.answer_log import AnswerLog, LoggedAnswer
from freshkb.serving.signals import LOW_CONFIDENCE

Risk = Literal["low_confidence", "escalated", "negative_feedback", "hallucination_signal"]
Reason = Literal["sample", Risk]
Verdict = Literal["correct", "incorrect", "should_decline"]
RISKS: tuple[Risk, ...] = get_args(Risk)
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)

# The answer log's signal for weak retrieval; every other signal is a hallucination signal.
LOW_CONFIDENCE_SIGNALS = frozenset({LOW_CONFIDENCE})

metadata = sa.MetaData()

review_queue_table = sa.Table(
    "review_queue",
    metadata,
    sa.Column("answer_id", sa.String(36), primary_key=True),
    sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
    # "sample" when drawn at random (then counted in the rate), else the first of its risks
    sa.Column("reason", sa.String(32), nullable=False, index=True),
    sa.Column("risks", sa.Text, nullable=False),  # JSON list: every risk it showed
    sa.Column("mode", sa.String(16), nullable=False),  # kept: the log prunes its rows
    sa.Column("reviewer", sa.String(128), nullable=True),
    sa.Column("verdict", sa.String(16), nullable=True),
    sa.Column("correction", sa.Text, nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
)


class UnknownAnswer(FreshkbError):
    """No logged answer has this id."""


class NotQueued(FreshkbError):
    """The answer is logged but was never queued for review."""


@dataclass(frozen=True)
class ReviewItem:
    """One queued answer and, once reviewed, its mark."""

    answer_id: str
    queued_at: datetime
    reason: Reason
    risks: list[Risk]
    mode: str
    reviewer: str | None = None
    verdict: Verdict | None = None
    correction: str | None = None
    note: str | None = None
    reviewed_at: datetime | None = None

    @property
    def sampled(self) -> bool:
        """Drawn at random, so it counts towards the measured rate."""
        return self.reason == "sample"

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        row = asdict(self)
        row["queued_at"] = self.queued_at.isoformat()
        row["reviewed_at"] = self.reviewed_at.isoformat() if self.reviewed_at else None
        return row


@dataclass(frozen=True)
class Draw:
    """What one `draw` queued."""

    start: datetime
    end: datetime
    seed: int
    answers: int  # logged in the period
    sampled: list[str] = field(default_factory=list)  # newly drawn at random
    high_risk: list[str] = field(default_factory=list)  # newly queued for their risks

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return {**asdict(self), "start": self.start.isoformat(), "end": self.end.isoformat()}


def risks_of(entry: LoggedAnswer, negative_feedback: set[str]) -> list[Risk]:
    """The high-risk traits of one logged answer, in the order of `RISKS`."""
    found: list[Risk] = []
    if LOW_CONFIDENCE_SIGNALS & set(entry.signals):
        found.append("low_confidence")
    if entry.mode == "escalated" or entry.escalation_id is not None:
        found.append("escalated")
    if entry.answer_id in negative_feedback:
        found.append("negative_feedback")
    if set(entry.signals) - LOW_CONFIDENCE_SIGNALS:
        found.append("hallucination_signal")
    return found


class ReviewQueue:
    """The review queue, in the operational database."""

    def __init__(self, url: str):
        self.engine = sql_engine(url, metadata)
        # Feedback is read here too: make sure its table exists even before any feedback.
        escalations.metadata.create_all(self.engine)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def items(self, pending: bool = False) -> list[ReviewItem]:
        """Queued answers, oldest first; `pending`: only those not yet reviewed."""
        table = review_queue_table
        query = sa.select(table).order_by(table.c.queued_at, table.c.answer_id)
        if pending:
            query = query.where(table.c.verdict.is_(None))
        with self.engine.connect() as connection:
            return [_item(row) for row in connection.execute(query).mappings()]

    def get(self, answer_id: str) -> ReviewItem | None:
        """One queued answer."""
        query = sa.select(review_queue_table).where(review_queue_table.c.answer_id == answer_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return None if row is None else _item(row)

    def negative_feedback(self, since: datetime) -> set[str]:
        """Ids of answers given unhelpful feedback since `since`."""
        table = escalations.feedback_table
        query = sa.select(table.c.answer_id).where(
            table.c.helpful.is_(False), table.c.created_at >= since
        )
        with self.engine.connect() as connection:
            return set(connection.execute(query).scalars())

    def draw(
        self,
        log: AnswerLog,
        start: datetime,
        end: datetime,
        n: int,
        seed: int | None = None,
    ) -> Draw:
        """Queue n answers of [start, end) drawn at random, plus every high-risk one.

        An answer is queued once: one already queued for its risks and now drawn becomes a
        random draw (so it counts in the rate); one drawn before is not drawn again.
        """
        seed = secrets.randbelow(2**32) if seed is None else seed
        answers = list(log.between(start, end))
        unhelpful = self.negative_feedback(start)
        queued = {item.answer_id: item for item in self.items()}
        undrawn = [
            a for a in answers if a.answer_id not in queued or not queued[a.answer_id].sampled
        ]
        drawn = random.Random(seed).sample(undrawn, min(n, len(undrawn)))
        drawn_ids = {a.answer_id for a in drawn}
        risky = [
            a
            for a in answers
            if a.answer_id not in queued and a.answer_id not in drawn_ids and risks_of(a, unhelpful)
        ]
        now = datetime.now(UTC)
        with self.engine.begin() as connection:
            for entry in drawn:
                risks = risks_of(entry, unhelpful)
                if entry.answer_id in queued:
                    _redraw(connection, entry.answer_id, risks)
                else:
                    _insert(connection, entry, "sample", risks, now)
            for entry in risky:
                risks = risks_of(entry, unhelpful)
                _insert(connection, entry, risks[0], risks, now)
        return Draw(start, end, seed, len(answers), sorted(drawn_ids), [a.answer_id for a in risky])

    def mark(
        self,
        log: AnswerLog,
        answer_id: str,
        verdict: Verdict,
        reviewer: str,
        correction: str | None = None,
        note: str | None = None,
    ) -> ReviewItem:
        """Record a reviewer's verdict (a later mark replaces an earlier one).

        UnknownAnswer when neither the log nor the queue knows the id; NotQueued when the
        answer is logged but not queued.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r}: write one of {', '.join(VERDICTS)}")
        if self.get(answer_id) is None:
            if log.find(answer_id) is None:
                raise UnknownAnswer(f"no logged answer {answer_id!r}")
            raise NotQueued(
                f"answer {answer_id!r} is not in the review queue; queue it with `review sample`"
            )
        table = review_queue_table
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(table)
                .where(table.c.answer_id == answer_id)
                .values(
                    verdict=verdict,
                    reviewer=reviewer,
                    correction=correction,
                    note=note,
                    reviewed_at=datetime.now(UTC),
                )
            )
        marked = self.get(answer_id)
        assert marked is not None
        return marked


def review_record(item: ReviewItem, entry: LoggedAnswer | None) -> dict[str, Any]:
    """A queued answer as a reviewer reads it: the mark, and from the answer log (while it
    keeps the row) when it was asked, the question's text if logged, and the citations."""
    return {
        **item.to_dict(),
        "answered_at": entry.answered_at.isoformat() if entry else None,
        "question": entry.question if entry else None,
        "answer": entry.answer if entry else None,
        "citations": [
            {key: citation.get(key) for key in ("chunk_id", "source", "document", "page")}
            for citation in (entry.citations if entry else [])
        ],
    }


def _insert(
    connection: sa.Connection, entry: LoggedAnswer, reason: Reason, risks: list[Risk], now: datetime
) -> None:
    connection.execute(
        sa.insert(review_queue_table).values(
            answer_id=entry.answer_id,
            queued_at=now,
            reason=reason,
            risks=json.dumps(risks),
            mode=entry.mode,
        )
    )


def _redraw(connection: sa.Connection, answer_id: str, risks: list[Risk]) -> None:
    table = review_queue_table
    connection.execute(
        sa.update(table)
        .where(table.c.answer_id == answer_id)
        .values(reason="sample", risks=json.dumps(risks))
    )


def _item(row: Any) -> ReviewItem:
    values = dict(row)
    values["risks"] = json.loads(values["risks"])
    values["queued_at"] = as_utc(values["queued_at"])
    values["reviewed_at"] = as_utc(values["reviewed_at"])
    return ReviewItem(**values)
