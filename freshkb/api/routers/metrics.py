"""Prometheus metrics of the answer service and the ingest side, at /metrics.

Open, like /healthz and /readyz, so a scraper needs no credential: it carries counts, latencies
and source names, never a question, an answer or a customer id. Keep the API's port on a
private network (it binds to loopback by default) or put the route behind the proxy's rules.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from freshkb.api.metrics import app_metrics

router = APIRouter(tags=["monitoring"])


# Not in the OpenAPI page: its body is Prometheus text, not JSON.
@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Every metric, in the Prometheus text exposition format."""
    return Response(app_metrics(request).exposition(), media_type=CONTENT_TYPE_LATEST)
