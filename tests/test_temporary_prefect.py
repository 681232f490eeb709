"""The temporary Prefect server a one-off command starts early: used only when no server is
configured, stopped unused when Prefect's settings name one, and a failed start is explained.

The real server is exercised by the CLI ingest tests (tests/test_ingest_e2e.py, whose run must
not start Prefect's own); here a stand-in process takes its place, to test the decisions."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from freshkb.cli import prefect_runs, temporary_prefect
from freshkb.core.errors import TransientError


def stand_in(script: str) -> Any:
    """A `_spawn` starting `python -c script` in place of the server."""
    return lambda port: temporary_prefect._run([sys.executable, "-c", script], port)


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No Prefect server configured: not in the environment, nor in Prefect's settings (where
    the session's test harness, once started, names its own)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_ENABLED", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield
    temporary_prefect.stop_temporary_server()


def test_runs_go_to_the_server_prefect_is_configured_with_and_the_early_one_stops(
    no_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(temporary_prefect, "_spawn", stand_in("import time; time.sleep(60)"))
    temporary_prefect.start_temporary_server()
    started = temporary_prefect._server
    assert started is not None and started.process.poll() is None
    # As if a Prefect profile or prefect.toml named a server: the environment does not.
    configured = temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:1/api"})
    with configured, temporary_prefect.on_temporary_server(timeout=5) as url:
        assert url is None
    assert temporary_prefect._server is None
    assert started.process.poll() is not None and not started.log.exists()


def test_nothing_starts_when_the_environment_names_a_server(
    no_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    temporary_prefect.start_temporary_server()
    assert temporary_prefect._server is None
    with temporary_prefect.on_temporary_server(timeout=5) as url:
        assert url is None


def test_nothing_starts_when_prefect_imported_already_names_a_server(
    no_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(temporary_prefect, "_spawn", stand_in("import time; time.sleep(60)"))
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        temporary_prefect.start_temporary_server()  # as `freshkb eval` under a test harness
    assert temporary_prefect._server is None


def test_a_server_that_exits_is_explained_with_its_log_and_the_fix(
    no_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:

    crash = "import sys; print('database is locked'); sys.exit(1)"
    monkeypatch.setattr(temporary_prefect, "_spawn", stand_in(crash))
    temporary_prefect.start_temporary_server()
    explained = prefect_runs.explained_prefect_failures()
    with pytest.raises(TransientError) as failed, explained:
        pytest.fail("the body must not run without a server")
    message = str(failed.value)
    assert "temporary API server exited before it answered; nothing was ingested" in message
    assert "exited with status 1" in message and "database is locked" in message
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in message  # the fix
    assert temporary_prefect._server is None
