"""The HTTP API of the answer service (FastAPI; OpenAPI docs at /docs).

Bearer tokens carry one of two scopes: `answer` (ask, search, read the ledger, give feedback)
and `admin` (also list and resolve escalations). Bodies over the size limit are refused with
413 before they are parsed; invalid input is a 422 naming the field.
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from freshkb.core.config import Settings
from freshkb.serving.service import AnswerService

Scope = Literal["answer", "admin"]


class AnswerRequest(BaseModel):
    """A customer's question."""

    question: str = Field(min_length=1, max_length=2000)
    customer_id: str | None = Field(default=None, min_length=1, max_length=128)
    k: int = Field(default=5, ge=1, le=20)


class ResolveRequest(BaseModel):
    """A human's answer to an escalated question."""

    answer: str = Field(min_length=1, max_length=10_000)
    resolved_by: str = Field(default="agent", min_length=1, max_length=128)


class FeedbackRequest(BaseModel):
    """Whether an answer helped."""

    answer_id: str = Field(min_length=1, max_length=64)
    helpful: bool
    comment: str | None = Field(default=None, max_length=2000)


def create_app(
    settings: Settings,
    service: AnswerService,
    ready: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The API over an answer service; `ready` reports dependency health for /readyz."""
    app = FastAPI(
        title="freshkb answer service",
        version="0.1.0",
        description="Freshness-aware answers with citations, from the freshkb index.",
    )
    bearer = HTTPBearer(auto_error=False)
    tokens = dict(settings.api_tokens)

    def require(scope: Scope) -> Callable[..., str]:
        def check(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> str:
            if credentials is None:
                raise HTTPException(
                    401,
                    "missing bearer token: send 'Authorization: Bearer <token>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            granted = next(
                (
                    granted_scope
                    for token, granted_scope in tokens.items()
                    if hmac.compare_digest(token.encode(), credentials.credentials.encode())
                ),
                None,
            )
            if granted is None:
                raise HTTPException(
                    401, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
            if scope == "admin" and granted != "admin":
                raise HTTPException(403, "this endpoint needs a token with the 'admin' scope")
            return granted

        return check

    @app.middleware("http")
    async def limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.api_max_body_bytes:
            return JSONResponse(
                {"detail": f"request body over {settings.api_max_body_bytes} bytes"},
                status_code=413,
            )
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()
            if len(body) > settings.api_max_body_bytes:
                return JSONResponse(
                    {"detail": f"request body over {settings.api_max_body_bytes} bytes"},
                    status_code=413,
                )
        return await call_next(request)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: Weaviate and the ledger answer (the LLM is reported, not required)."""
        report = ready() if ready else {"ready": True}
        return JSONResponse(report, status_code=200 if report.get("ready") else 503)

    @app.post("/v1/answer")
    async def answer(
        body: AnswerRequest, _: Annotated[str, Depends(require("answer"))]
    ) -> dict[str, Any]:
        """Answer a question; `mode` says how (normal, degraded, escalated, refused)."""
        result = await run_in_threadpool(service.answer, body.question, body.customer_id, body.k)
        return result.to_dict()

    @app.get("/v1/search")
    async def search(
        _: Annotated[str, Depends(require("answer"))],
        q: Annotated[str, Query(min_length=1, max_length=2000)],
        customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        k: Annotated[int, Query(ge=1, le=50)] = 5,
    ) -> dict[str, Any]:
        """Retrieval only, over the fresh sources; lists the sources left out."""
        hits, left_out = await run_in_threadpool(service.search, q, customer_id, k)
        return {
            "hits": [
                {
                    "chunk_id": hit.uuid,
                    "text": hit.text,
                    "source": hit.source,
                    "document": hit.document_key,
                    "title": hit.title,
                    "page": hit.page,
                    "score": hit.score,
                    "relevance": hit.relevance,
                    "ingested_at": hit.ingested_at.isoformat() if hit.ingested_at else None,
                    "flow_run_id": hit.flow_run_id,
                }
                for hit in hits
            ],
            "stale_sources": [state.name for state in left_out],
        }

    @app.get("/v1/sources")
    def sources(_: Annotated[str, Depends(require("answer"))]) -> list[dict[str, Any]]:
        """The freshness ledger: every source's state, age and SLA."""
        return [state.to_dict() for state in service.ledger.states()]

    @app.get("/v1/escalations")
    def escalations(
        _: Annotated[str, Depends(require("admin"))],
        status: Annotated[Literal["open", "resolved"] | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        """Escalated questions, newest first."""
        return [item.to_dict() for item in service.escalations.find(status)]

    @app.post("/v1/escalations/{escalation_id}/resolve")
    def resolve(
        escalation_id: str, body: ResolveRequest, _: Annotated[str, Depends(require("admin"))]
    ) -> dict[str, Any]:
        """Record the human answer to an escalation."""
        if service.escalations.get(escalation_id) is None:
            raise HTTPException(404, f"no escalation {escalation_id}")
        return service.escalations.resolve(escalation_id, body.answer, body.resolved_by).to_dict()

    @app.post("/v1/feedback", status_code=201)
    def feedback(
        body: FeedbackRequest, _: Annotated[str, Depends(require("answer"))]
    ) -> dict[str, Any]:
        """Store whether an answer helped."""
        feedback_id = service.escalations.add_feedback(body.answer_id, body.helpful, body.comment)
        return {"id": feedback_id}

    return app
