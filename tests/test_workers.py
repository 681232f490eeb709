"""`freshkb workers up --n 2` (a real Prefect server and two process workers), deployments of
three tiny sources, runs triggered at once: they spread over both workers (the worker that ran
each flow run, as the Prefect API records it), and the two runs of a source that ran on two
workers at the same time never ingested it at once (the source's global concurrency limit on
the server). `status` lists each worker, `down` stops them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import REPO_ROOT, ledger_runs
from typer.testing import CliRunner

from freshkb.cli.workers import workers_app
from freshkb.core.config import Settings

PORT = int(os.environ.get("FRESHKB_TEST_WORKERS_PREFECT_PORT", "34200"))
API_URL = f"http://127.0.0.1:{PORT}/api"
NEVER_DURING_THE_TEST = "0 0 1 1 *"  # runs are triggered, not scheduled
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SOURCES = ("alpha", "beta", "gamma")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli() -> typer.Typer:
    """The workers commands as `freshkb` will carry them."""
    app = typer.Typer()
    app.add_typer(workers_app, name="workers")
    return app


def workers(env: dict[str, str], *args: str) -> Any:
    """`freshkb workers ARGS --json` in this process; its exit code and parsed output."""
    result = CliRunner().invoke(cli(), ["workers", *args, "--json"], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def pool(
    weaviate_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Two workers on the test port, with their own PREFECT_HOME; all stopped at the end."""
    env = {
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-workers")),
        "FRESHKB_PREFECT_PORT": str(PORT),
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # quick turns
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    }
    started = time.monotonic()
    code, state = workers(env, "up", "--n", "2")
    try:
        assert code == 0, state
        print(f"\nworkers up --n 2: {time.monotonic() - started:.1f}s")
        yield env
    finally:
        workers(env, "down")


def write_config(tmp_path: Path) -> Path:
    """Three documents sources of one or two sample policies each."""
    files = {"alpha": ["returns.md"], "beta": ["warranty.txt"], "gamma": ["returns.md"]}
    sources = []
    for name in SOURCES:
        folder = tmp_path / name
        folder.mkdir()
        for file in files[name]:
            (folder / file).write_bytes((REPO_ROOT / "sample" / "policies" / file).read_bytes())
        sources.append(
            {
                "name": name,
                "kind": "documents",
                "location": name,
                "owner": "tests",
                "schedule": NEVER_DURING_THE_TEST,
            }
        )
    config = tmp_path / "freshkb.yaml"
    config.write_text(json.dumps({"sources": sources}))
    return config


def deploy(env: dict[str, str], config: Path) -> dict[str, str]:
    """`freshkb deploy` in a subprocess; deployment name -> id."""
    done = subprocess.run(
        [sys.executable, "-m", "freshkb.cli", "deploy", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {d["name"]: d["id"] for d in json.loads(done.stdout)["deployments"]}


def finished(client: Any, run_ids: list[Any], timeout: float) -> list[Any]:
    """The flow runs, once every one of them has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [client.read_flow_run(run_id) for run_id in run_ids]
        if all(run.state_type.value in TERMINAL for run in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"flow runs not finished within {timeout:.0f}s")


@pytest.mark.timeout(900)
def test_runs_spread_over_two_workers_and_one_source_is_never_ingested_twice_at_once(
    store, pool, tmp_path
):
    from freshkb.flows.prefect_server import api_client

    code, state = workers(pool, "status")
    assert code == 0 and state["running"], state
    names = {w["name"] for w in state["workers"]}
    assert names == {f"freshkb-worker-{PORT}", f"freshkb-worker-{PORT}-2"}
    assert all(w["pid"] and w["online"] for w in state["workers"]), state["workers"]
    assert len({w["log"] for w in state["workers"]}) == 2

    ids = deploy(pool, write_config(tmp_path))
    started = time.monotonic()
    with api_client(API_URL) as client:
        client.pause_deployment(ids["check-freshness/every-10-minutes"])
        # The nightly run ingests every source, each under its slot; at the same moment each
        # source's own deployment ingests it again, on the other worker (one run per worker).
        triggered = [client.create_flow_run_from_deployment(ids["ingest-all-sources/nightly"])]
        triggered += [
            client.create_flow_run_from_deployment(ids[f"ingest-source/{name}"]) for name in SOURCES
        ]
        runs = finished(client, [run.id for run in triggered], timeout=720)
    print(f"\n4 runs on 2 workers: {time.monotonic() - started:.1f}s")

    for run in runs:
        assert run.state.name == "Completed", (run.name, run.state.message)
    ran_on = [run.labels.get("prefect.worker.name") for run in runs]
    assert set(ran_on) == names, ran_on  # both workers ran some

    nightly_worker = ran_on[0]
    other_worker_sources = [
        name for name, worker in zip(SOURCES, ran_on[1:], strict=True) if worker != nightly_worker
    ]
    assert other_worker_sources, "no source ran on both workers"
    for name, worker in zip(SOURCES, ran_on[1:], strict=True):
        ingests = sorted(ledger_runs(name), key=lambda run: run.started_at)
        print(name, worker, [(str(r.started_at), str(r.finished_at)) for r in ingests])
        assert [run.status for run in ingests] == ["completed", "completed"], name
        # one after the other, never both at once, whichever workers ran them
        assert ingests[1].started_at >= ingests[0].finished_at, (name, ingests)


@pytest.mark.timeout(120)
def test_down_stops_every_worker_and_the_server(pool):
    code, state = workers(pool, "status")
    pids = [w["pid"] for w in state["workers"]]
    assert code == 0 and len(pids) == 2 and all(pids)

    code, stopped = workers(pool, "down")
    assert code == 0 and stopped == {"stopped": True}
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"prefect" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    code, after = workers(pool, "status")
    assert code == 1 and not after["server_running"] and after["workers"] == []
