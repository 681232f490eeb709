"""Prometheus metrics of the answer service and the ingest side, at /metrics."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["monitoring"])
