"""What an ingest does when what it depends on goes away: Weaviate killed in the middle of the
gRPC writes, the freshness ledger read-only, locked, or its PostgreSQL server stopped.

Every ingest here is a real process (see ingest_runner.py): a run can be stopped at a named
point (SIGSTOP) while the test breaks something, then let go on (SIGCONT).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from freshkb.core.config import Settings

from .harness import (
    CorpusVersions,
    IngestRunner,
    RunOutcome,
    corpus_versions,
    index_differences,
    index_objects,
    ledger_view,
    wait_for_event,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE = "manuals"
WRITE_BATCH = 1
LLM_PORT = int(os.environ.get("FRESHKB_TEST_LLM_PORT", "18091"))
PG_PORT, NO_LLM_PORT = LLM_PORT + 30, LLM_PORT + 31
ANSWER_TOKEN = "outage-answer-token"
QUESTION = "What is the warranty on the TrailMaster X4 Tent?"


def completed(outcome: RunOutcome) -> dict[str, Any]:
    """The report of a run that must have completed."""
    assert outcome.status == 0, outcome.crash
    assert outcome.report is not None and outcome.report["status"] == "completed", outcome.report
    return outcome.report


def stopped_run(
    runner: IngestRunner, source: dict[str, Any], at: str, env: dict[str, str] | None = None
) -> tuple[int, Path, float]:
    """Start a run that stops itself at point `at`; returns once it has stopped there."""
    started = time.monotonic()
    pid, result = runner.start(
        {
            "source": source,
            "kill": {"at": at, "action": "stop"},
            "write_batch": WRITE_BATCH,
            "env": env or {},
        }
    )
    wait_for_event(result, "stopped", timeout=300)
    return pid, result, started


# -- Weaviate killed mid-ingest -----------------------------------------------------------


@contextmanager
def weaviate_killed(settings: Any) -> Iterator[None]:
    """SIGKILL the session's Weaviate (no shutdown of its own); start it again afterwards."""
    from freshkb.store import server

    pid = server.managed_process(settings).read_pid()
    assert pid is not None, "the session's Weaviate is not running"
    os.kill(pid, signal.SIGKILL)
    server.down(settings)  # reaps the killed process and forgets its pid file
    try:
        yield
    finally:
        server.up(settings)


@pytest.mark.timeout(900)
def test_weaviate_killed_mid_write_fails_the_run_cleanly_and_the_next_run_converges(
    store: Any, runner: IngestRunner, weaviate_settings: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from freshkb.api import create_app
    from freshkb.serving.runtime import build_runtime

    corpus = corpus_versions(tmp_path / SOURCE)
    settings = Settings()
    corpus.use("v2")
    completed(runner.run(corpus.source(SOURCE), write_batch=WRITE_BATCH))
    reference = index_objects(settings, SOURCE)
    corpus.use("v1")
    completed(runner.run(corpus.source(SOURCE), write_batch=WRITE_BATCH))
    good = ledger_view(settings.ledger_database_url, SOURCE)
    answer_settings = Settings(
        llm_base_url=f"http://127.0.0.1:{NO_LLM_PORT}/v1",
        llm_timeout=2,
        api_tokens={ANSWER_TOKEN: "answer"},
    )
    runtime = build_runtime(answer_settings)  # a running answer service, before the outage
    app = create_app(answer_settings, runtime.service, runtime.ready)

    corpus.use("v2")
    pid, result, started = stopped_run(runner, corpus.source(SOURCE), "batch:2")
    try:
        with weaviate_killed(weaviate_settings):
            os.kill(pid, signal.SIGCONT)  # batch 2 goes to a dead server, then the retries
            during = runtime.service.answer(QUESTION)
            with TestClient(app) as client:
                over_http = client.post(
                    "/v1/answer",
                    json={"question": QUESTION},
                    headers={"Authorization": f"Bearer {ANSWER_TOKEN}"},
                )
                readiness = client.get("/readyz")
            failed = runner.finish(pid, result, started)
            during_ledger = ledger_view(settings.ledger_database_url, SOURCE)
    finally:
        runtime.close()

    # The run failed cleanly: a report (no crash) that says in words what happened.
    assert failed.status == 0 and failed.crash is None, failed.crash
    report = failed.report
    assert report is not None and report["status"] == "failed", report
    assert "Weaviate" in report["error"] and "Traceback" not in report["error"], report["error"]
    timeline = "\n".join(str(e) for e in failed.events)
    assert any(e["event"] == "after-batch:1" for e in failed.events), timeline
    assert not any(e["event"] == "after-batch:2" for e in failed.events), timeline
    # The ledger did not move: the last good sync is the one before the outage.
    assert during_ledger.last_success_at == good.last_success_at
    assert during_ledger.last_success_flow_run_id == good.last_success_flow_run_id
    assert during_ledger.last_status == "failed" and during_ledger.last_error == report["error"]
    # Answers during the outage took the defined path (issue 9, fix 3).
    assert during.mode == "escalated" and during.escalation_id is not None
    assert any(r.startswith("knowledge base unavailable") for r in during.reasons), during.reasons
    if over_http.status_code == 200:
        assert over_http.json()["mode"] == "escalated", over_http.json()
    else:
        assert over_http.status_code == 503 and over_http.headers.get("Retry-After")
    assert readiness.status_code == 503 and readiness.json()["weaviate"] is False

    # Weaviate is back: the next run converges to what a clean run of v2 left.
    rerun = completed(runner.run(corpus.source(SOURCE), write_batch=WRITE_BATCH))
    assert index_differences(index_objects(settings, SOURCE), reference) == []
    after = ledger_view(settings.ledger_database_url, SOURCE)
    assert after.last_success_flow_run_id == rerun["flow_run_id"] != good.last_success_flow_run_id


# -- the ledger unavailable ---------------------------------------------------------------


def cli_ingest(
    runner: IngestRunner, corpus: CorpusVersions, ledger_url: str
) -> tuple[int, dict[str, Any], str]:
    """`freshkb ingest --source ... --json` in a real process with this ledger: its exit code,
    the run report it printed, and what it wrote on stderr."""
    outcome = runner.run(
        cli=[
            *("ingest", "--source", SOURCE, "--kind", "documents"),
            *("--path", str(corpus.folder), "--json"),
        ],
        env={"FRESHKB_LEDGER_URL": ledger_url},
    )
    code = next((e["code"] for e in outcome.events if e["event"] == "exit"), None)
    assert code is not None, outcome.crash or outcome.events[-3:]
    printed = Path(f"{runner.workdir}/run-{runner.count:03d}.jsonl")
    stdout = Path(f"{printed}.out").read_text()
    stderr = Path(f"{printed}.err").read_text()
    return code, json.loads(stdout[stdout.index("{") :]), stderr


def assert_refused(
    code: int, report: dict[str, Any], stderr: str, causes: tuple[str, ...], fix: str
) -> None:
    """The run failed before any stage, and said why and what to do, in words."""
    error = report["error"] or ""
    assert code == 1 and report["status"] == "failed", (code, report)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert error.startswith("the freshness ledger at ") and " is unavailable (" in error, error
    assert any(cause in error for cause in causes) and fix in error, error
    assert f"nothing of {SOURCE} was ingested" in error and "FRESHKB_LEDGER_URL" in error, error
    assert report["stage_seconds"] == {} and report["objects_written"] == 0, report
    assert "freshness ledger" in stderr, "the log says it too"


@contextmanager
def immutable(*paths: Path) -> Iterator[bool]:
    """Make files and folders read-only even for root (chattr +i); False where that cannot be
    done (a file system without the attribute), True otherwise. Always undone."""
    done: list[Path] = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                yield False
                return
            done.append(path)
        yield True
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=False)


@pytest.mark.timeout(300)
def test_read_only_sqlite_ledger_refuses_the_ingest_and_says_why(
    store: Any, runner: IngestRunner, tmp_path: Path
) -> None:
    from freshkb.store.ledger import Ledger

    corpus = corpus_versions(tmp_path / SOURCE)
    corpus.use("v1")
    folder = tmp_path / "ledger"
    folder.mkdir()
    database = folder / "ledger.sqlite3"
    Ledger(f"sqlite:///{database}").close()
    with immutable(database, folder) as real:
        # Root writes through file modes; where chattr is missing, SQLite's own read-only mode.
        url = f"sqlite:///{database}" if real else f"sqlite:///file:{database}?mode=ro&uri=true"
        code, report, stderr = cli_ingest(runner, corpus, url)
    assert_refused(
        code, report, stderr, ("readonly database", "unable to open database file"), "writ"
    )
    assert index_objects(Settings(), SOURCE) == {}, "nothing written"
    assert ledger_view(f"sqlite:///{database}", SOURCE).runs == []


@contextmanager
def locked(database: Path) -> Iterator[None]:
    """Another connection holding the write lock of a SQLite database."""
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.timeout(300)
def test_locked_sqlite_ledger_refuses_the_ingest_and_says_why(
    store: Any, runner: IngestRunner, tmp_path: Path
) -> None:
    from freshkb.store.ledger import Ledger

    corpus = corpus_versions(tmp_path / SOURCE)
    corpus.use("v1")
    database = tmp_path / "ledger.sqlite3"
    Ledger(f"sqlite:///{database}").close()
    with locked(database):
        code, report, stderr = cli_ingest(runner, corpus, f"sqlite:///{database}")
    assert_refused(code, report, stderr, ("database is locked",), "holding its lock")
    assert index_objects(Settings(), SOURCE) == {}, "nothing written"
    assert ledger_view(f"sqlite:///{database}", SOURCE).runs == []


@pytest.mark.timeout(300)
def test_ledger_locked_at_the_end_fails_the_run_and_keeps_the_last_good_sync(
    store: Any, runner: IngestRunner, tmp_path: Path
) -> None:
    corpus = corpus_versions(tmp_path / SOURCE)
    database = tmp_path / "ledger.sqlite3"
    env = {"FRESHKB_LEDGER_URL": f"sqlite:///{database}"}
    corpus.use("v1")
    completed(runner.run(corpus.source(SOURCE), write_batch=WRITE_BATCH, env=env))
    good = ledger_view(env["FRESHKB_LEDGER_URL"], SOURCE)
    corpus.use("v2")
    pid, result, started = stopped_run(runner, corpus.source(SOURCE), "before:record_result", env)
    with locked(database):
        os.kill(pid, signal.SIGCONT)
        outcome = runner.finish(pid, result, started)
    assert outcome.status == 0 and outcome.crash is None, outcome.crash
    report = outcome.report
    assert report is not None and report["status"] == "failed", report
    assert "freshness ledger" in report["error"] and "database is locked" in report["error"]
    assert "last successful sync of manuals stays as it was" in report["error"], report["error"]
    after = ledger_view(env["FRESHKB_LEDGER_URL"], SOURCE)
    assert (after.last_success_at, after.last_success_flow_run_id) == (
        good.last_success_at,
        good.last_success_flow_run_id,
    )
    assert after.runs[-1] == (report["flow_run_id"], "running"), after.runs
    # Once the lock is gone the next run records its success (the index needs nothing).
    rerun = completed(runner.run(corpus.source(SOURCE), write_batch=WRITE_BATCH, env=env))
    assert rerun["objects_written"] == 0 and rerun["documents_unchanged"] == 5
    assert (
        ledger_view(env["FRESHKB_LEDGER_URL"], SOURCE).last_success_flow_run_id
        == (rerun["flow_run_id"])
    )


def _pg(name: str) -> list[str]:
    """A PostgreSQL server program, run as the postgres user when we are root."""
    from postgres_server import _as_postgres, pg_bin

    return _as_postgres([pg_bin(name)])


@pytest.fixture
def postgres_ledger() -> Iterator[tuple[str, Path]]:
    """A throw-away PostgreSQL cluster for the ledger (as tests/test_postgres_source.py starts
    one): its URL, with a password that must never show, and its data directory."""
    root = Path(tempfile.mkdtemp(prefix="freshkb-ledger-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    initdb = [*_pg("initdb"), "-D", str(data), "-A", "trust", "-U", "app"]
    subprocess.run(initdb, check=True, capture_output=True)
    options = f"-p {PG_PORT} -k {root} -c listen_addresses=127.0.0.1"
    start = [*_pg("pg_ctl"), "-D", str(data), "-o", options, "-w", "start", "-l", f"{root}/pg.log"]
    subprocess.run(start, check=True, capture_output=True)
    yield f"postgresql+psycopg://app:secret-pw@127.0.0.1:{PG_PORT}/postgres", data
    stop = [*_pg("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
    subprocess.run(stop, check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(300)
def test_stopped_postgres_ledger_refuses_the_ingest_and_says_why(
    store: Any, runner: IngestRunner, tmp_path: Path, postgres_ledger: tuple[str, Path]
) -> None:
    from freshkb.store.ledger import Ledger

    url, data = postgres_ledger
    Ledger(url).close()
    stop = [*_pg("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
    subprocess.run(stop, check=True, capture_output=True)
    corpus = corpus_versions(tmp_path / SOURCE)
    corpus.use("v1")
    code, report, stderr = cli_ingest(runner, corpus, url)
    assert_refused(code, report, stderr, ("Connection refused",), "start its database server")
    assert "secret-pw" not in stderr, "the ledger's password never shows"
    assert index_objects(Settings(), SOURCE) == {}, "nothing written"
    with pytest.raises(sa.exc.OperationalError):
        sa.create_engine(url).connect()
