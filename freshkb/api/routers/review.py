"""Human review of logged answers (admin scope): the review queue and reviewers' marks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from freshkb.api.auth import AdminScope
from freshkb.api.review_schemas import ReviewMark, ReviewRecord
from freshkb.api.state import api_state
from freshkb.evaluation.review import NotQueued, ReviewQueue, UnknownAnswer, review_record
from freshkb.serving.answer_log import AnswerLog

router = APIRouter(prefix="/v1/review", tags=["review"])


def _stores(request: Request) -> tuple[ReviewQueue, AnswerLog]:
    """The review queue and the answer log, opened once per app (each holds a pool)."""
    state = request.app.state
    if getattr(state, "review_stores", None) is None:
        settings = api_state(request).service.settings
        url = settings.ledger_database_url
        state.review_stores = (ReviewQueue(url), AnswerLog(url, settings.answer_log_retention_days))
    stores: tuple[ReviewQueue, AnswerLog] = state.review_stores
    return stores


Stores = Annotated[tuple[ReviewQueue, AnswerLog], Depends(_stores)]


@router.get("")
def review_queue(
    _: AdminScope,
    stores: Stores,
    pending: Annotated[bool, Query(description="only answers not yet reviewed")] = False,
) -> list[ReviewRecord]:
    """Queued answers, oldest first."""
    queue, log = stores
    return [
        ReviewRecord.model_validate(review_record(item, log.find(item.answer_id)))
        for item in queue.items(pending)
    ]


@router.post("/{answer_id}")
def mark(
    answer_id: Annotated[str, Path(min_length=1, max_length=64)],
    body: ReviewMark,
    credential: AdminScope,
    stores: Stores,
) -> ReviewRecord:
    """Record a reviewer's verdict on a queued answer: 404 for an answer the log does not
    know, 409 for one that is not queued for review."""
    queue, log = stores
    try:
        reviewer = body.reviewer or credential.name
        item = queue.mark(log, answer_id, body.verdict, reviewer, body.correction, body.note)
    except UnknownAnswer as exc:
        raise HTTPException(404, "no logged answer with this id") from exc
    except NotQueued as exc:
        raise HTTPException(
            409, "this answer is not in the review queue; queue it with `freshkb review sample`"
        ) from exc
    return ReviewRecord.model_validate(review_record(item, log.find(answer_id)))
