"""The HTTP API of the answer service (FastAPI; OpenAPI docs at /docs).

Bearer tokens carry a scope (freshkb/api/auth.py): `answer` (ask, search, read the ledger, give
feedback, for any customer named), `customer:<id>` (the same, for that customer only) or
`admin` (also list and resolve escalations). Bodies over the size limit are refused with
413 before they are parsed; invalid input is a 422 naming the field (the path, a query
parameter or a body field: malformed JSON, wrong types, sizes, NUL bytes and other control
characters, invalid UTF-8), without echoing the value back. A dependency that is down
for now (Weaviate for /v1/search) is a 503 with Retry-After; /v1/answer instead answers in
a defined mode (escalated, "knowledge base unavailable"). Beyond the worker's answer capacity,
requests are turned away at once with 429 (queue full) or 503 (no slot within the wait), with
Retry-After (serving/admission.py). The operational database (ledger, escalations, audit)
locked or down is a 503 with Retry-After where a route needs it; answers go on without the
ledger, with every source's freshness unknown (serving/service.py). GET /metrics is open, in
the Prometheus text format (freshkb/api/metrics.py); an admin reads one logged answer, with
its feedback and escalation, at GET /v1/answers/{answer_id}.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp

from freshkb.api.metrics import RequestMetrics, ServiceMetrics
from freshkb.api.routers import admin, answers, health, metrics, review, uploads
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
    app.add_middleware(
        RequestLimits,
        max_bytes=settings.api_max_body_bytes,
        streamed=uploads.STREAMED_BODIES,
    )
    # Added last, so outermost: it times every request, refused ones (413, 422) included.
    app.state.metrics = ServiceMetrics(service)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(TransientError, _unavailable)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.include_router(health.router)
    app.include_router(answers.router)
    app.include_router(admin.router)
    app.include_router(review.router)
    app.include_router(metrics.router)
    uploads.install(app, settings)
    return app


RETRY_AFTER_SECONDS = 5
# Where a request is invalid (loc, as FastAPI names it), why, and the kind of problem.
Problem = tuple[tuple[str | int, ...], str, str]


async def _unavailable(request: Request, exc: Exception) -> Response:
    """A transient failure of a dependency: 503, and when to try again."""
    return JSONResponse(
        {"detail": f"temporarily unavailable: {exc}"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    """The operational database is locked, read-only or down: 503, and when to try again."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
    return JSONResponse(
        {"detail": f"operational database unavailable: {cause}"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _invalid(request: Request, exc: Exception) -> Response:
    """422 naming every invalid field; values are not echoed back (they may be huge, binary,
    or a customer's data)."""
    assert isinstance(exc, RequestValidationError)
    return invalid_fields([_problem(error) for error in exc.errors()])


def _problem(error: dict[str, Any]) -> Problem:
    """One validation error as (loc, msg, type); malformed JSON names the body and where."""
    if error["type"] == "json_invalid":
        where, why = error["loc"][-1], error.get("ctx", {}).get("error", "")
        return ("body",), f"malformed JSON at position {where}: {why}", "json_invalid"
    return tuple(error["loc"]), error["msg"], error["type"]


def invalid_fields(problems: list[Problem]) -> JSONResponse:
    """A 422 in FastAPI's shape (`detail`: loc, msg, type), plus one line naming the fields."""
    detail = [{"loc": list(loc), "msg": msg, "type": kind} for loc, msg, kind in problems]
    named = "; ".join(".".join(str(part) for part in loc) + f": {msg}" for loc, msg, _ in problems)
    return JSONResponse({"detail": detail, "message": f"invalid request: {named}"}, 422)


async def _overloaded(request: Request, exc: Exception) -> Response:
    """Turned away by back-pressure: 429 (queue full) or 503 (waited too long), Retry-After."""
    assert isinstance(exc, Overloaded)
    return JSONResponse(
        {"detail": str(exc)},
        status_code=exc.status,
        headers={"Retry-After": str(exc.retry_after)},
    )


class RequestLimits(BaseHTTPMiddleware):
    """Refuse a request body over `max_bytes` with 413 before anything parses it, and a path,
    query parameter or JSON body that is not clean UTF-8 text with 422 naming it."""

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: re.Pattern[str] | None = None):
        super().__init__(app)
        self.max_bytes = max_bytes
        # Upload routes take files far over the JSON limit; they check their own size as the
        # bytes stream in, so their bodies are neither size-checked nor read here.
        self.streamed = streamed

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Check the declared length (or read a body sent without one), then the encoding."""
        length = request.headers.get("content-length")
        writes = request.method in ("POST", "PUT", "PATCH")
        streamed = (
            writes and self.streamed is not None and bool(self.streamed.match(request.url.path))
        )
        if (
            not streamed
            and length is not None
            and length.isdigit()
            and int(length) > self.max_bytes
        ):
            return self._too_large()
        is_json = writes and "json" in request.headers.get("content-type", "json")
        body = b""
        if writes and not streamed and (length is None or is_json):  # uploads stream on
            body = await request.body()
            if len(body) > self.max_bytes:
                return self._too_large()
        problem = _unclean_path(request.scope.get("raw_path") or b"") or _unclean_query(
            request.scope.get("query_string") or b""
        )
        if problem is None and is_json and body:
            problem = _not_utf8(body, ("body",))
        if problem is not None:
            return invalid_fields([problem])
        return await call_next(request)

    def _too_large(self) -> JSONResponse:
        detail = f"request body over {self.max_bytes} bytes"
        return JSONResponse({"detail": detail}, status_code=413)


def _not_utf8(raw: bytes, loc: tuple[str | int, ...]) -> Problem | None:
    """Why `raw` is not UTF-8, naming the byte; None when it is."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{raw[exc.start]:02x} at position {exc.start}"
        return loc, f"not valid UTF-8 ({where})", "utf8_invalid"
    return None


def _unclean_text(raw: bytes, loc: tuple[str | int, ...]) -> Problem | None:
    """Percent-decoded `raw` as UTF-8 text without control characters, or why not."""
    decoded = unquote_to_bytes(raw)
    problem = _not_utf8(decoded, loc)
    if problem is not None:
        return problem
    text = decoded.decode("utf-8")
    control = next((c for c in text if (c < " " and c not in "\t\n\r") or c == "\x7f"), None)
    if control is not None:
        return loc, f"must not contain control characters (found {control!r})", "control_char"
    return None


def _unclean_path(raw_path: bytes) -> Problem | None:
    """A path (its ids included) must be clean text."""
    return _unclean_text(raw_path, ("path",))


def _unclean_query(query: bytes) -> Problem | None:
    """Each query parameter must be clean text; the problem names the parameter."""
    for pair in query.split(b"&"):
        name, _, value = pair.replace(b"+", b" ").partition(b"=")
        label = unquote_to_bytes(name).decode("utf-8", "replace")
        problem = _unclean_text(name, ("query", label)) or _unclean_text(value, ("query", label))
        if problem is not None:
            return problem
    return None
