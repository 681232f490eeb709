"""Liveness and readiness probes (no token needed)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from freshkb.api.schemas import HealthStatus, Readiness
from freshkb.api.state import ApiState, api_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> HealthStatus:
    """Liveness: the process answers."""
    return HealthStatus(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Weaviate or the ledger is down"}},
)
def readyz(state: Annotated[ApiState, Depends(api_state)]) -> JSONResponse:
    """Readiness: Weaviate and the ledger answer (the LLM is reported, not required)."""
    # The report goes out as the check wrote it, with the status code saying ready or not.
    report = state.ready() if state.ready else {"ready": True}
    return JSONResponse(report, status_code=200 if report.get("ready") else 503)
