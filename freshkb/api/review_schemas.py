"""What the review routes take and give: a reviewer's mark, and a queued answer with it.

Response fields mirror `freshkb.evaluation.review.review_record` field for field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from freshkb.api.schemas import Identifier, Written

VerdictName = Literal["correct", "incorrect", "should_decline"]
RiskName = Literal["low_confidence", "escalated", "negative_feedback", "hallucination_signal"]


class ReviewMark(BaseModel):
    """A reviewer's verdict on a queued answer; a correction becomes the truth of its case."""

    model_config = ConfigDict(extra="forbid")

    verdict: VerdictName
    correction: Written | None = Field(
        default=None,
        max_length=10_000,
        description="the right answer; end it with [DOCUMENT#page=N] citations when known",
    )
    note: Written | None = Field(default=None, max_length=2000)
    reviewer: Identifier | None = Field(
        default=None, min_length=1, max_length=128, description="default: the token's name"
    )


class ReviewCitation(BaseModel):
    """A passage the reviewed answer cited."""

    chunk_id: str | None
    source: str | None
    document: str | None
    page: int | None


class ReviewRecord(BaseModel):
    """A queued answer: why it was queued, the answer log's view of it, and its mark."""

    answer_id: str
    queued_at: str
    reason: Literal["sample"] | RiskName = Field(
        description="sample: drawn at random (counted in the hallucination rate); else a risk"
    )
    risks: list[RiskName]
    mode: str
    reviewer: str | None
    verdict: VerdictName | None
    correction: str | None
    note: str | None
    reviewed_at: str | None
    answered_at: str | None = Field(description="None once the answer log pruned the answer")
    question: str | None = Field(description="None when the log keeps only the question's hash")
    answer: str | None = Field(description="the answer as served; None when only hashes are kept")
    citations: list[ReviewCitation]
