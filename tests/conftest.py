"""Test session set-up: a real Weaviate on its own ports, a temporary Prefect database, and
freshkb settings pointing at a throw-away data directory."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["FRESHKB_PROGRESS"] = "0"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Ports of the test server: away from a developer's own freshkb Weaviate on 8080/50051.
TEST_HTTP_PORT = int(os.environ.get("FRESHKB_TEST_WEAVIATE_HTTP_PORT", "18080"))
TEST_GRPC_PORT = int(os.environ.get("FRESHKB_TEST_WEAVIATE_GRPC_PORT", "15051"))

# The test LLM server: away from a developer's own on 8091.
TEST_LLM_PORT = int(os.environ.get("FRESHKB_TEST_LLM_PORT", "18091"))

_SESSION_ENV_KEYS = (
    "FRESHKB_DATA_DIR",
    "FRESHKB_WEAVIATE_HTTP_PORT",
    "FRESHKB_WEAVIATE_GRPC_PORT",
    "FRESHKB_CONFIG",
    "WEAVIATE_URL",
    "WEAVIATE_API_KEY",
)


@pytest.fixture(scope="session")
def freshkb_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Point Settings() (read by flows and the CLI) at a temporary data dir and the test ports."""
    saved = {key: os.environ.get(key) for key in _SESSION_ENV_KEYS}
    env = {
        "FRESHKB_DATA_DIR": str(tmp_path_factory.mktemp("freshkb-data")),
        "FRESHKB_WEAVIATE_HTTP_PORT": str(TEST_HTTP_PORT),
        "FRESHKB_WEAVIATE_GRPC_PORT": str(TEST_GRPC_PORT),
    }
    for key in ("WEAVIATE_URL", "WEAVIATE_API_KEY", "FRESHKB_CONFIG"):
        os.environ.pop(key, None)
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def weaviate_settings(freshkb_env: dict[str, str]) -> Iterator[object]:
    """A real Weaviate server for the whole session (built with `go install` if not cached)."""
    from freshkb.core.config import Settings
    from freshkb.store import server

    settings = Settings()
    server.up(settings)
    yield settings
    server.down(settings)


@pytest.fixture(scope="session")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real llama.cpp server (xllamacpp) with SmolLM2-135M for the whole session."""
    from freshkb.serving import llm_server
    from freshkb.serving.llm_server import LlmServerConfig

    config = LlmServerConfig(port=TEST_LLM_PORT, state_dir=tmp_path_factory.mktemp("llm"))
    llm_server.up(config)
    yield config
    llm_server.down(config)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Flows run for real against a temporary Prefect database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def store(weaviate_settings: object) -> Iterator[object]:
    """A WeaviateStore on an empty server (every collection and alias removed) and an empty
    freshness ledger."""
    from freshkb.store.connection import connect
    from freshkb.store.weaviate_store import WeaviateStore

    empty_index_and_ledger(weaviate_settings)
    client = connect(weaviate_settings)  # type: ignore[arg-type]
    yield WeaviateStore(client)
    client.close()


def empty_index_and_ledger(weaviate_settings: object) -> None:
    """Remove every collection and alias from the test Weaviate and the freshness ledger."""
    from freshkb.store.connection import connect

    for leftover in Path(os.environ["FRESHKB_DATA_DIR"]).glob("ledger.sqlite3*"):
        leftover.unlink()
    client = connect(weaviate_settings)  # type: ignore[arg-type]
    for alias in client.alias.list_all():
        client.alias.delete(alias_name=alias)
    client.collections.delete_all()
    client.close()


@pytest.fixture
def corpus_copy(tmp_path: Path) -> Path:
    """A writable folder for tests that edit, add and delete source files."""
    folder = tmp_path / "source"
    folder.mkdir()
    return folder


REPO_ROOT = Path(__file__).resolve().parents[1]


class CountingEmbedder:
    """Wraps a real embedder and counts the texts sent to it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.max_tokens = inner.max_tokens
        self.embedded = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """The inner embedder's vectors, counted."""
        self.embedded += len(texts)
        return list(self.inner.embed(texts))


# A PostgreSQL server for the session (shared state on PostgreSQL, issue 14): away from the
# customers-source test's own server (FRESHKB_TEST_PG_PORT) and a developer's 5432.
TEST_POSTGRES_PORT = int(os.environ.get("FRESHKB_TEST_POSTGRES_PORT", "15433"))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A throw-away PostgreSQL server for the whole session; the URL of its `postgres` database.

    Tests that write take their own database from `postgres_database`."""
    from postgres_server import postgres_server

    with postgres_server(TEST_POSTGRES_PORT) as url:
        yield url


@pytest.fixture
def postgres_database(postgres_server_url: str, request: pytest.FixtureRequest) -> str:
    """The URL of an empty database, named after the test, on the session's PostgreSQL."""
    from postgres_server import new_database

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:55]
    return new_database(postgres_server_url, name)


def ledger_runs(source: str) -> list[Any]:
    """The ingest runs of `source` the freshness ledger of the current settings recorded."""
    from freshkb.core.config import Settings
    from freshkb.store.ledger import Ledger

    ledger = Ledger(Settings().ledger_database_url)
    try:
        return ledger.runs(source)
    finally:
        ledger.close()
