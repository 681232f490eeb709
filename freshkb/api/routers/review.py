"""Human review of logged answers: the review queue and reviewers' marks."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/review", tags=["review"])
