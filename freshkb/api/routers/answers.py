"""What a support front end calls: answers, retrieval, the freshness ledger, feedback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from freshkb.api.auth import AnswerScope
from freshkb.api.schemas import (
    AnswerRequest,
    AnswerResponse,
    FeedbackReceipt,
    FeedbackRequest,
    RetrievedPassage,
    SearchResponse,
    SourceStatus,
)
from freshkb.api.state import Service

router = APIRouter(prefix="/v1", tags=["answers"])


@router.post("/answer")
async def answer(body: AnswerRequest, _: AnswerScope, service: Service) -> AnswerResponse:
    """Answer a question; `mode` says how (normal, degraded, escalated, refused)."""
    result = await run_in_threadpool(service.answer, body.question, body.customer_id, body.k)
    return AnswerResponse.model_validate(result.to_dict())


@router.get("/search")
async def search(
    _: AnswerScope,
    service: Service,
    q: Annotated[str, Query(min_length=1, max_length=2000)],
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    k: Annotated[int, Query(ge=1, le=50)] = 5,
) -> SearchResponse:
    """Retrieval only, over the fresh sources; lists the sources left out."""
    hits, left_out = await run_in_threadpool(service.search, q, customer_id, k)
    return SearchResponse(
        hits=[RetrievedPassage.of(hit) for hit in hits],
        stale_sources=[state.name for state in left_out],
    )


@router.get("/sources")
def sources(_: AnswerScope, service: Service) -> list[SourceStatus]:
    """The freshness ledger: every source's state, age and SLA."""
    return [SourceStatus.model_validate(state.to_dict()) for state in service.ledger.states()]


@router.post("/feedback", status_code=201)
def feedback(body: FeedbackRequest, _: AnswerScope, service: Service) -> FeedbackReceipt:
    """Store whether an answer helped."""
    feedback_id = service.escalations.add_feedback(body.answer_id, body.helpful, body.comment)
    return FeedbackReceipt(id=feedback_id)
