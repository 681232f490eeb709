"""What the routes share, held on the app: the answer service, the tokens, the credential
audit, the admission gates and the readiness check; and the dependencies that hand them to a
route."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

from fastapi import Depends, Request

from freshkb.serving.admission import AdmissionGate, AsyncAdmissionGate
from freshkb.serving.audit import AnswerAudit
from freshkb.serving.service import AnswerService


@dataclass(frozen=True)
class ApiState:
    """The answer service behind the API, who may call it, and how readiness is checked."""

    service: AnswerService
    tokens: Mapping[str, str]  # token -> answer | admin | customer:<id>
    audit: AnswerAudit | None = None  # which credential acted for which customer
    # Back-pressure on /v1/answer; a thread gate given here is taken for its sizes only.
    answers: AsyncAdmissionGate | AdmissionGate | None = None
    search: AsyncAdmissionGate | None = None  # on /v1/search; default: sized like answers
    ready: Callable[[], dict[str, Any]] | None = None

    @cached_property
    def answer_gate(self) -> AsyncAdmissionGate | None:
        """The gate of /v1/answer, admitting on the event loop."""
        if self.answers is None or isinstance(self.answers, AsyncAdmissionGate):
            return self.answers
        return AsyncAdmissionGate.sized_as(self.answers, "answers")

    @cached_property
    def search_gate(self) -> AsyncAdmissionGate | None:
        """The gate of /v1/search: its own slots, so searches never take the answers' own."""
        if self.search is not None or self.answers is None:
            return self.search
        return AsyncAdmissionGate.sized_as(self.answers, "search")


def api_state(request: Request) -> ApiState:
    """The state `create_app` stored on the app serving this request."""
    state: ApiState = request.app.state.api
    return state


async def answer_service(request: Request) -> AnswerService:
    """The answer service (a dependency of the routes; async, so it takes no worker thread)."""
    return api_state(request).service


Service = Annotated[AnswerService, Depends(answer_service)]
