"""What the routes share, held on the app: the answer service, the tokens, the credential
audit and the readiness check; and the dependencies that hand them to a route."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from freshkb.serving.admission import AdmissionGate
from freshkb.serving.audit import AnswerAudit
from freshkb.serving.service import AnswerService


@dataclass(frozen=True)
class ApiState:
    """The answer service behind the API, who may call it, and how readiness is checked."""

    service: AnswerService
    tokens: Mapping[str, str]  # token -> answer | admin | customer:<id>
    audit: AnswerAudit | None = None  # which credential acted for which customer
    answers: AdmissionGate | None = None  # back-pressure on /v1/answer
    ready: Callable[[], dict[str, Any]] | None = None


def api_state(request: Request) -> ApiState:
    """The state `create_app` stored on the app serving this request."""
    state: ApiState = request.app.state.api
    return state


def answer_service(request: Request) -> AnswerService:
    """The answer service (a dependency of the routes)."""
    return api_state(request).service


Service = Annotated[AnswerService, Depends(answer_service)]
