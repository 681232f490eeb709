"""The API is live while the service loads, and ready only once it can answer
(freshkb/api/starting.py, `freshkb serve`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from freshkb.api.starting import StartingApp, Startup
from freshkb.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SERVE_PORT = int(os.environ.get("FRESHKB_TEST_LLM_PORT", "18091")) + 27


def real_app() -> FastAPI:
    """What the build hands over: an app with its own probes and a route."""
    app = FastAPI()
    app.get("/readyz")(lambda: {"ready": True, "from": "real app"})
    app.get("/v1/search")(lambda: {"hits": []})
    return app


@pytest.mark.timeout(30)
def test_probes_answer_while_loading_and_requests_reach_the_app_once_built() -> None:
    release = threading.Event()

    def build(startup: Startup) -> FastAPI:
        startup.step("loading the embedding model")
        assert release.wait(10)
        startup.step("building the API")
        return real_app()

    startup = Startup(build=build)
    startup.begin()
    with TestClient(StartingApp(startup)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.headers["Retry-After"] == "2"
        assert loading.json()["starting"] == "loading the embedding model"
        early = client.get("/v1/search", params={"q": "boots"})
        assert early.status_code == 503 and "starting" in early.json()["detail"]
        release.set()
        deadline = time.monotonic() + 10
        while startup.app is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get("/readyz").json() == {"ready": True, "from": "real app"}
        assert client.get("/v1/search").json() == {"hits": []}
    assert startup.ready_after is not None
    # The step that waited for the release is named as the slowest in the start-up's breakdown.
    assert startup.breakdown().startswith("loading the embedding model ")
    assert set(startup.seconds) == {"starting", "loading the embedding model"}


@pytest.mark.timeout(30)
def test_a_failed_build_is_reported_and_ends_the_process() -> None:
    ended: list[BaseException] = []

    def build(startup: Startup) -> FastAPI:
        raise ConfigError("embedding model 'nope' could not be loaded")

    startup = Startup(build=build, on_failure=ended.append)
    startup.begin().join(10)
    assert [str(exc) for exc in ended] == ["embedding model 'nope' could not be loaded"]
    with TestClient(StartingApp(startup)) as client:
        report = client.get("/readyz")
    assert report.status_code == 503
    assert report.json() == {
        "ready": False,
        "error": "start-up failed: embedding model 'nope' could not be loaded",
    }


def serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`freshkb serve` on the test's own port, as a user starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "freshkb", "serve", "--port", str(SERVE_PORT)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_serve_is_live_before_it_is_ready_and_ready_means_it_answers(
    weaviate_settings: object, tmp_path: Path
) -> None:
    env = dict(
        os.environ,
        FRESHKB_API_TOKENS=json.dumps({"startup-token": "answer"}),
        FRESHKB_LLM_BASE_URL="http://127.0.0.1:9/v1",
    )
    process = serve(env, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{SERVE_PORT}"
    started, live, ready = time.monotonic(), None, None
    try:
        while ready is None and time.monotonic() - started < 300:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if live is None and httpx.get(f"{url}/healthz").status_code == 200:
                    live = time.monotonic() - started
                    not_yet = httpx.get(f"{url}/readyz")
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    ready = time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert live is not None and ready is not None, (tmp_path / "serve.log").read_text()
        print(f"serve: live after {live:.1f}s, ready after {ready:.1f}s")
        if not_yet.status_code == 503:  # caught while loading: the probe names the step
            assert not_yet.json()["ready"] is False and not_yet.json()["starting"]
        answered = httpx.post(
            f"{url}/v1/answer",
            json={"question": "Can I return boots I have not worn?"},
            headers={"Authorization": "Bearer startup-token"},
            timeout=60,
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["mode"] in {"normal", "degraded", "escalated", "refused"}
    finally:
        process.terminate()
        process.wait(30)
    assert live <= ready


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_serve_with_a_model_it_cannot_load_exits_naming_it(
    weaviate_settings: object, tmp_path: Path
) -> None:
    env = dict(
        os.environ,
        FRESHKB_API_TOKENS=json.dumps({"startup-token": "answer"}),
        FRESHKB_EMBEDDING_MODEL=str(tmp_path / "no-such-model"),
        HF_HUB_OFFLINE="1",
    )
    process = serve(env, tmp_path / "serve.log")
    assert process.wait(240) != 0
    assert "no-such-model" in (tmp_path / "serve.log").read_text()
