"""A real Prefect server and process worker started by `freshkb prefect up`, deployments
registered by `freshkb deploy`, runs triggered on them: a good source completes and its objects
are in Weaviate, a source whose folder is missing ends Failed with the reason, two runs of one
source never overlap (the deployment's limit and the source's concurrency slot), a stale source
is announced as a Prefect event, and `freshkb prefect down` stops both processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO_ROOT, ledger_runs

from freshkb.core.config import Settings
from freshkb.core.processes import ManagedProcess

PORT = int(os.environ.get("FRESHKB_TEST_PREFECT_PORT", "24200"))
API_URL = f"http://127.0.0.1:{PORT}/api"
# A schedule that does not fire while the test runs (once a year): runs are triggered instead.
NEVER_DURING_THE_TEST = "0 0 1 1 *"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def freshkb(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the freshkb CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "freshkb.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def prefect_env(
    weaviate_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """`freshkb prefect up` on the test port, with its own PREFECT_HOME; down at the end."""
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "FRESHKB_PREFECT_PORT": str(PORT),
        # Quick turns: the worker polls every 2 s, a run refused a slot retries after 5 s.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    }
    env.pop("PREFECT_API_URL", None)
    up = freshkb(env, "prefect", "up", "--json", timeout=400)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield env
    finally:
        freshkb(env, "prefect", "down", timeout=120)


def write_config(tmp_path: Path) -> Path:
    """Two documents sources: `kb` with two Markdown policies, `gone` whose folder is missing.

    kb's SLA of one second makes it stale right after each sync, so runs announce it.
    """
    folder = tmp_path / "kb"
    folder.mkdir()
    for name in ("returns.md", "warranty.txt"):
        (folder / name).write_bytes((REPO_ROOT / "sample" / "policies" / name).read_bytes())
    config = tmp_path / "freshkb.yaml"
    sources = [
        {"name": "kb", "kind": "documents", "location": "kb", "owner": "tests"},
        {"name": "gone", "kind": "documents", "location": "unmounted", "owner": "tests"},
    ]
    for source in sources:
        source["schedule"] = NEVER_DURING_THE_TEST
    sources[0]["freshness"] = {"max_age": "1s"}
    config.write_text(json.dumps({"sources": sources}))  # JSON is YAML
    return config


def wait_for(condition: Any, timeout: float, what: str, poll: float = 1.0) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.mark.timeout(900)
def test_deployed_runs_complete_fail_with_reason_and_never_overlap(
    store, prefect_env, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from freshkb.flows.deployed import source_slot
    from freshkb.flows.prefect_server import api_client

    config = write_config(tmp_path)
    deployed = freshkb(prefect_env, "deploy", "--config", str(config), "--json")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    ids = {d["name"]: d["id"] for d in json.loads(deployed.stdout)["deployments"]}
    assert set(ids) == {
        "ingest-source/kb",
        "ingest-source/gone",
        "ingest-all-sources/nightly",
        "check-freshness/every-10-minutes",
    }

    monkeypatch.setenv("PREFECT_API_URL", API_URL)
    with temporary_settings(updates={PREFECT_API_URL: API_URL}), api_client(API_URL) as client:
        for name in ("ingest-all-sources/nightly", "check-freshness/every-10-minutes"):
            client.pause_deployment(ids[name])  # only the runs this test triggers
        # Hold kb's slot, as a CLI run would: the first kb run must wait for it.
        with source_slot("kb"):
            kb_pair = [
                client.create_flow_run_from_deployment(ids["ingest-source/kb"]) for _ in range(2)
            ]
            failing = client.create_flow_run_from_deployment(ids["ingest-source/gone"])
            # Either may take the deployment's one slot (the worker submits them together, and
            # the server admits whichever asks first): that one is "first", the other waits.
            first = wait_for(
                lambda: next(
                    (
                        r
                        for r in kb_pair
                        if client.read_flow_run(r.id).state_type.value == "RUNNING"
                    ),
                    None,
                ),
                300,
                "a kb run to start",
            )
            second = next(r for r in kb_pair if r.id != first.id)
            time.sleep(3)
            assert ledger_runs("kb") == [], "kb was ingested without its slot"
            released = datetime.now(UTC)
        runs = {
            label: wait_for(
                lambda run=run: (
                    (r := client.read_flow_run(run.id)).state_type.value in TERMINAL and r
                ),
                480,
                f"the {label} run to finish",
            )
            for label, run in (("first", first), ("second", second), ("failing", failing))
        }
        # A run announces what is stale as it ends, often within kb's one-second SLA of its own
        # sync; the freshness check, run once that second has passed, must announce kb.
        time.sleep(2)
        check_id = ids["check-freshness/every-10-minutes"]
        client.resume_deployment(check_id)
        check = client.create_flow_run_from_deployment(check_id)
        checked = wait_for(
            lambda: (r := client.read_flow_run(check.id)).state_type.value in TERMINAL and r,
            300,
            "the freshness check to finish",
        )
    assert checked.state.name == "Completed", checked.state.message
    assert runs["first"].state.name == "Completed", runs["first"].state.message
    assert runs["second"].state.name == "Completed", runs["second"].state.message
    assert runs["failing"].state.name == "Failed"
    assert "ingest of gone failed" in runs["failing"].state.message
    assert "unmounted does not exist" in runs["failing"].state.message

    assert {c["document_key"] for c in store_chunks(store)} == {"returns.md", "warranty.txt"}

    # Never two at once: the deployment queued the second run until the first had ended, and
    # the ingest itself (the ledger's record of it) started only once the test let go of kb.
    assert runs["second"].start_time >= runs["first"].end_time
    kb_runs = sorted(ledger_runs("kb"), key=lambda run: run.started_at)
    gone_runs = ledger_runs("gone")
    assert [run.status for run in kb_runs] == ["completed", "completed"]
    assert kb_runs[0].started_at >= released
    assert kb_runs[0].finished_at is not None
    assert kb_runs[1].started_at >= kb_runs[0].finished_at
    assert gone_runs[0].status == "failed" and "does not exist" in (gone_runs[0].error or "")

    stale = wait_for(lambda: stale_events(), 60, "a freshkb.source.stale event")
    assert stale[0]["resource"]["prefect.resource.name"] == "kb"
    related = {r["prefect.resource.id"] for r in stale[0]["related"]}
    assert f"prefect.deployment.{ids['ingest-source/kb']}" in related


@pytest.mark.timeout(600)
def test_a_cli_ingest_runs_on_the_running_prefect_server(prefect_env, tmp_path):
    # No PREFECT_API_URL: with `freshkb prefect up` running, the one-off ingest uses that server
    # (its run recorded there, no temporary server started) instead of starting its own.
    from freshkb.flows.prefect_server import api_client

    assert "PREFECT_API_URL" not in prefect_env
    config = write_config(tmp_path)
    started = datetime.now(UTC)
    done = freshkb(prefect_env, "ingest", "kb", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"runs go to the running Prefect server at {API_URL}" in done.stderr
    assert "Starting temporary server" not in done.stderr
    flow_run_id = json.loads(done.stdout)["flow_run_id"]
    with api_client(API_URL) as client:
        run = client.read_flow_run(flow_run_id)
    assert run.state_type.value == "COMPLETED"
    assert run.start_time >= started


def store_chunks(store: Any) -> list[dict[str, Any]]:
    """Every live policy chunk's properties."""
    alias = store.client.alias.get(alias_name="PolicyChunk")
    collection = store.client.collections.get(alias.collection)
    return [dict(obj.properties) for obj in collection.iterator()]


def stale_events() -> list[dict[str, Any]]:
    """`freshkb.source.stale` events the server holds."""
    response = httpx.post(
        f"{API_URL}/events/filter",
        json={"filter": {"event": {"prefix": ["freshkb.source.stale"]}}, "limit": 10},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["events"]


@pytest.mark.timeout(300)
def test_status_then_down_stops_server_and_worker(prefect_env):
    status = freshkb(prefect_env, "prefect", "status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    state = json.loads(status.stdout)
    assert state["server_running"] and state["worker_alive"]
    assert state["ui_url"] == f"http://127.0.0.1:{PORT}" and state["pool"] == "freshkb-local"
    pids = (state["server_pid"], state["worker_pid"])

    down = freshkb(prefect_env, "prefect", "down", "--json")
    assert down.returncode == 0 and json.loads(down.stdout) == {"stopped": True}
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"prefect" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    after = freshkb(prefect_env, "prefect", "status", "--json")
    assert after.returncode == 1
    state = json.loads(after.stdout)
    assert not state["server_running"] and not state["worker_alive"]


def test_weaviate_unreachable_is_the_cause_worth_retrying(weaviate_settings):
    from freshkb.flows.deployed import store_unreachable

    assert not store_unreachable(weaviate_settings)
    assert store_unreachable(Settings(weaviate_url="http://127.0.0.1:9"))


@pytest.mark.timeout(60)
def test_managed_process_stops_with_its_own_stop_signal(tmp_path):
    """A server that shuts down on SIGINT and ignores SIGTERM (a Prefect worker) stops at once
    when asked with SIGINT, not only after the SIGKILL deadline."""
    server = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(0))\n"
        "print('serving', flush=True)\n"
        "time.sleep(120)\n"
    )
    process = ManagedProcess(
        tmp_path / "w.pid", tmp_path / "w.log", signature=b"SIG_IGN", stop_signal=signal.SIGINT
    )
    popen = process.start([sys.executable, "-c", server], env=dict(os.environ))
    assert process.wait_ready(popen, lambda: "serving" in process.log_tail(), 30, name="worker")
    started = time.monotonic()
    assert process.stop(timeout=20)
    assert time.monotonic() - started < 10, "stopped by SIGINT, not by the SIGKILL after 20 s"
    assert popen.wait(timeout=5) == 0, "exited cleanly on SIGINT"
