"""Fixtures of the fault-injection suite (the harness itself is in harness.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import IngestRunner


@pytest.fixture(scope="session")
def runner(
    weaviate_settings: Any, prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestRunner]:
    """A warm ingest runner on the session's Weaviate, data directory and Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    env["FRESHKB_PROGRESS"] = "0"
    started = time.monotonic()
    runner = IngestRunner(env, tmp_path_factory.mktemp("runner"))
    print(f"ingest runner warm in {time.monotonic() - started:.1f}s")
    yield runner
    runner.close()
