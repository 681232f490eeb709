"""The HTTP API of the answer service (FastAPI; OpenAPI docs at /docs).

Bearer tokens carry a scope (freshkb/api/auth.py): `answer` (ask, search, read the ledger, give
feedback, for any customer named), `customer:<id>` (the same, for that customer only) or
`admin` (also list and resolve escalations). Bodies over the size limit are refused with
413 before they are parsed; invalid input is a 422 naming the field. A dependency that is down
for now (Weaviate for /v1/search) is a 503 with Retry-After; /v1/answer instead answers in
a defined mode (escalated, "knowledge base unavailable"). Beyond the worker's answer capacity,
requests are turned away at once with 429 (queue full) or 503 (no slot within the wait), with
Retry-After (serving/admission.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp

from freshkb.api.routers import admin, answers, health
from freshkb.api.state import ApiState
from freshkb.core.config import Settings
from freshkb.core.errors import TransientError
from freshkb.serving.admission import AdmissionGate, Overloaded
from freshkb.serving.audit import AnswerAudit
from freshkb.serving.service import AnswerService


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
    app.state.api = ApiState(
        service=service,
        tokens=dict(settings.api_tokens),
        ready=ready,
        audit=AnswerAudit(settings.ledger_database_url),
        answers=AdmissionGate(
            "answers",
            settings.answer_concurrency,
            settings.answer_queue,
            settings.answer_queue_seconds,
        ),
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(TransientError, _unavailable)
    app.include_router(health.router)
    app.include_router(answers.router)
    app.include_router(admin.router)
    return app


RETRY_AFTER_SECONDS = 5


async def _unavailable(request: Request, exc: Exception) -> Response:
    """A transient failure of a dependency: 503, and when to try again."""
    return JSONResponse(
        {"detail": f"temporarily unavailable: {exc}"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _overloaded(request: Request, exc: Exception) -> Response:
    """Turned away by back-pressure: 429 (queue full) or 503 (waited too long), Retry-After."""
    assert isinstance(exc, Overloaded)
    return JSONResponse(
        {"detail": str(exc)},
        status_code=exc.status,
        headers={"Retry-After": str(exc.retry_after)},
    )


class BodySizeLimit(BaseHTTPMiddleware):
    """Refuse a request body over `max_bytes` with 413, before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        super().__init__(app)
        self.max_bytes = max_bytes

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Check the declared length, or read a body sent without one (chunked)."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return self._too_large()
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()
            if len(body) > self.max_bytes:
                return self._too_large()
        return await call_next(request)

    def _too_large(self) -> JSONResponse:
        detail = f"request body over {self.max_bytes} bytes"
        return JSONResponse({"detail": detail}, status_code=413)
