"""What a support front end calls: answers, retrieval, the freshness ledger, feedback; and,
for an admin, one logged answer with what joins it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from freshkb.api.auth import AdminScope, AnswerScope
from freshkb.api.metrics import app_metrics
from freshkb.api.schemas import (
    AnswerRequest,
    AnswerResponse,
    FeedbackReceipt,
    FeedbackRequest,
    LoggedAnswerRecord,
    RetrievedPassage,
    SearchResponse,
    SourceStatus,
)
from freshkb.api.state import Service, api_state
from freshkb.serving.admission import AsyncAdmissionGate
from freshkb.serving.answer_log import answer_detail
from freshkb.serving.audit import ActedFor, now

router = APIRouter(prefix="/v1", tags=["answers"])
CUSTOMER_MISMATCH: dict[int | str, dict[str, Any]] = {
    403: {"description": "a customer token named another customer"}
}
OVERLOADED: dict[int | str, dict[str, Any]] = {
    429: {"description": "too many requests waiting; retry after Retry-After seconds"},
    503: {
        "description": "no slot freed up in time (or, for search, Weaviate is down); retry "
        "after Retry-After seconds"
    },
}
T = TypeVar("T")


@router.post("/answer", responses=CUSTOMER_MISMATCH | OVERLOADED)
async def answer(body: AnswerRequest, credential: AnswerScope, request: Request) -> AnswerResponse:
    """Answer a question; `mode` says how (normal, degraded, escalated, refused).

    A customer token answers for its own customer; `customer_id` may be left out."""
    state = api_state(request)
    customer_id = credential.acting_for(body.customer_id)
    # The budget runs from arrival: time spent queueing for a slot leaves less for the LLM.
    deadline = time.monotonic() + state.service.settings.answer_budget_seconds
    result = await _admitted(
        state.answer_gate, state.service.answer, body.question, customer_id, body.k, deadline
    )
    if state.audit is not None:
        entry = ActedFor(
            result.answer_id,
            now(),
            credential.fingerprint,
            credential.scope,
            customer_id,
            result.mode,
        )
        await run_in_threadpool(state.audit.record, entry)
    app_metrics(request).observe_answer(result)
    return AnswerResponse.model_validate(result.to_dict())


async def _admitted(gate: AsyncAdmissionGate | None, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` on a worker thread once `gate` admits it.

    Admission happens here on the event loop, before any thread is taken, so a refusal is
    immediate and at most `gate.running` threads work on this route at once."""
    if gate is None:
        return await run_in_threadpool(call, *args)
    async with gate.admit():
        return await anyio.to_thread.run_sync(call, *args, limiter=gate.limiter)


@router.get("/search", responses=CUSTOMER_MISMATCH | OVERLOADED)
async def search(
    credential: AnswerScope,
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=2000)],
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    k: Annotated[int, Query(ge=1, le=50)] = 5,
) -> SearchResponse:
    """Retrieval only, over the fresh sources; lists the sources left out."""
    state = api_state(request)
    acting = credential.acting_for(customer_id)
    hits, left_out = await _admitted(state.search_gate, state.service.search, q, acting, k)
    return SearchResponse(
        hits=[RetrievedPassage.of(hit) for hit in hits],
        stale_sources=[source.name for source in left_out],
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


@router.get("/answers/{answer_id}", responses={404: {"description": "no such answer logged"}})
def logged_answer(
    answer_id: Annotated[str, Path(min_length=1, max_length=64)],
    _: AdminScope,
    request: Request,
) -> LoggedAnswerRecord:
    """One answer from the answer log, with its feedback, escalation and credential."""
    state = api_state(request)
    journal = state.service.journal
    if journal is None:
        raise HTTPException(404, "this service keeps no answer log")
    found = answer_detail(answer_id, journal.log, state.service.escalations, state.audit)
    if found is None:
        raise HTTPException(404, f"no logged answer {answer_id} (never given, or pruned)")
    return LoggedAnswerRecord.model_validate(found.to_dict())
