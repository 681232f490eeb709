"""The HTTP API of the answer service (FastAPI; OpenAPI docs at /docs)."""

from freshkb.api.app import create_app

__all__ = ["create_app"]
