"""What a human agent calls (admin scope): the escalated questions, and resolving them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from freshkb.api.auth import AdminScope
from freshkb.api.schemas import EscalationRecord, ResolveRequest
from freshkb.api.state import Service

router = APIRouter(prefix="/v1/escalations", tags=["escalations"])


@router.get("")
def escalations(
    _: AdminScope,
    service: Service,
    status: Annotated[Literal["open", "resolved"] | None, Query()] = None,
) -> list[EscalationRecord]:
    """Escalated questions, newest first."""
    return [
        EscalationRecord.model_validate(item.to_dict()) for item in service.escalations.find(status)
    ]


@router.post("/{escalation_id}/resolve")
def resolve(
    escalation_id: str, body: ResolveRequest, _: AdminScope, service: Service
) -> EscalationRecord:
    """Record the human answer to an escalation."""
    if service.escalations.get(escalation_id) is None:
        raise HTTPException(404, f"no escalation {escalation_id}")
    resolved = service.escalations.resolve(escalation_id, body.answer, body.resolved_by)
    return EscalationRecord.model_validate(resolved.to_dict())
