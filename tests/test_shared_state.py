"""Shared state on a real PostgreSQL (issue 14): the vector and verdict caches and the
freshness ledger, written by several processes at once, and an ingest whose second run, from a
fresh data directory, takes every vector and verdict from the shared caches.

Each test has its own database on the session's server (conftest `postgres_database`).
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from array import array
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import REPO_ROOT, empty_index_and_ledger

from freshkb.core.report import RunReport
from freshkb.core.sources import parse_source
from freshkb.embeddings.cache import VectorCache, open_vector_cache
from freshkb.screening.verdict_cache import VerdictCache, open_verdict_cache, verdict_to_json
from freshkb.screening.verdicts import DocumentVerdict
from freshkb.store.ledger import Ledger

pytestmark = [pytest.mark.integration]

MODEL = "test-model"
DETECTOR = "test-detector"
PER_WORKER = 300  # keys each worker writes; the middle third is written by both
RUNS_PER_WORKER = 10


def _vector(key: str) -> list[float]:
    """A vector that depends only on its key, so both writers of a shared key agree."""
    seed = int(key.split("-")[1])
    return [float(seed), seed / 4, -seed / 8]  # exact in float32


def _verdict(key: str) -> DocumentVerdict:
    seed = int(key.split("-")[1])
    return DocumentVerdict(
        flagged=seed % 7 == 0, score=seed / 1024, rules_hit=False, detector_hit=False, passages=()
    )


def _keys(worker: int) -> list[str]:
    """Worker 0 writes keys 0..299, worker 1 keys 200..499: 100 written by both."""
    start = worker * (PER_WORKER * 2 // 3)
    return [f"k-{n}" for n in range(start, start + PER_WORKER)]


def _cache_worker(url: str, worker: int, barrier: Any) -> dict[str, int]:
    """Open both caches on a fresh database at the same moment as the other worker, then write
    in batches, reading everything written so far after each batch."""
    barrier.wait()
    vectors, verdicts = VectorCache(url), VerdictCache(url)
    keys = _keys(worker)
    seen = 0
    for start in range(0, len(keys), 25):
        batch = keys[start : start + 25]
        vectors.put_many([(k, _vector(k)) for k in batch], MODEL)
        verdicts.put_many([(k, _verdict(k)) for k in batch], DETECTOR)
        found = vectors.get_many(keys[: start + 25], MODEL)
        assert found == {k: _vector(k) for k in keys[: start + 25]}
        seen = len(verdicts.get_many(keys[: start + 25], DETECTOR))
    vectors.close()
    verdicts.close()
    return {"vectors_seen": len(found), "verdicts_seen": seen}


def _ledger_worker(url: str, worker: int, barrier: Any) -> list[int]:
    """Record runs of this worker's own source and, at the same moments as the other worker,
    the first runs of sources neither has seen (both insert their ledger row at once)."""
    own = parse_source({"name": f"src-{worker}", "kind": "documents", "location": "/nowhere"})
    barrier.wait()
    ledger = Ledger(url)
    ids = []
    for n in range(RUNS_PER_WORKER):
        new = parse_source({"name": f"new-{n}", "kind": "documents", "location": "/nowhere"})
        barrier.wait()
        for source in (new, own):
            flow_run = f"w{worker}-run{n}"
            run_id = ledger.record_attempt(source, flow_run, datetime.now(UTC))
            report = RunReport(source=source.name, kind="documents", flow_run_id=flow_run)
            report.documents_seen = n
            ledger.record_result(run_id, report, datetime.now(UTC))
            ids.append(run_id)
    ledger.close()
    return ids


def _first_use_worker(urls: list[str], worker: int, barrier: Any) -> int:
    """Open the ledger and both caches on each fresh database at the same moment as the other
    worker: both find no table, and both create them."""
    for url in urls:
        barrier.wait()
        for store in (Ledger(url), VectorCache(url)):
            store.close()
    return len(urls)


TwoProcesses = Callable[[Callable[..., Any], Any], list[Any]]


@pytest.fixture(scope="module")
def run_two() -> Iterator[TwoProcesses]:
    """Runs `target(arg, worker, barrier)` in two spawned processes at once; their results.

    One pool for the module: the workers import freshkb once, not once per test."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(2) as pool:

        def run(target: Callable[..., Any], arg: Any) -> list[Any]:
            # A worker blocks at the barrier until the other arrives, so the two calls always
            # run in the two processes; a failed worker frees the other by the timeout.
            barrier = manager.Barrier(2, timeout=30)
            pending = [pool.apply_async(target, (arg, n, barrier)) for n in range(2)]
            return [result.get(timeout=120) for result in pending]

        yield run


def _scalar(url: str, query: str) -> Any:
    """One value read straight from the database, past freshkb's code."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(query)).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_processes_share_both_caches(
    database: str, request: pytest.FixtureRequest, run_two: TwoProcesses
):
    """PostgreSQL as a cluster's workers share it; SQLite, the default, as two local ingests."""
    url = (
        request.getfixturevalue("postgres_database")
        if database == "postgresql"
        else f"sqlite:///{request.getfixturevalue('tmp_path') / 'shared.sqlite3'}"
    )
    results = run_two(_cache_worker, url)
    assert [r["vectors_seen"] for r in results] == [PER_WORKER, PER_WORKER]
    assert [r["verdicts_seen"] for r in results] == [PER_WORKER, PER_WORKER]
    every = sorted({*_keys(0), *_keys(1)})
    assert len(every) == 500
    # In that database itself, not in some other file.
    assert _scalar(url, "SELECT count(*) FROM vectors") == len(every)
    assert _scalar(url, "SELECT count(*) FROM document_verdicts") == len(every)
    vectors, verdicts = VectorCache(url), VerdictCache(url)
    try:
        assert vectors.get_many(every, MODEL) == {k: _vector(k) for k in every}
        assert verdicts.get_many(every, DETECTOR) == {k: _verdict(k) for k in every}
        assert vectors.get_many(every, "another-model") == {}
        assert vectors.count(MODEL) == len(every)
    finally:
        vectors.close()
        verdicts.close()


@pytest.mark.timeout(180)
def test_ledger_on_postgresql_keeps_every_run_of_concurrent_writers(
    postgres_database: str, run_two: TwoProcesses
):
    ids = run_two(_ledger_worker, postgres_database)
    assert len({*ids[0], *ids[1]}) == 4 * RUNS_PER_WORKER  # no run lost or recorded twice
    ledger = Ledger(postgres_database)
    try:
        states = {state.name: state for state in ledger.states()}
        news = {f"new-{n}" for n in range(RUNS_PER_WORKER)}
        assert set(states) == {"src-0", "src-1", *news}
        assert {state.last_status for state in states.values()} == {"completed"}
        for worker in range(2):
            runs = ledger.runs(f"src-{worker}", limit=100)
            assert len(runs) == RUNS_PER_WORKER
            assert {run.status for run in runs} == {"completed"}
            assert runs[0].flow_run_id == f"w{worker}-run{RUNS_PER_WORKER - 1}"
            assert states[f"src-{worker}"].counts["documents_seen"] == RUNS_PER_WORKER - 1
        for name in news:
            assert {run.flow_run_id[:2] for run in ledger.runs(name)} == {"w0", "w1"}
    finally:
        ledger.close()
    assert _scalar(postgres_database, "SELECT count(*) FROM ingest_runs") == 4 * RUNS_PER_WORKER


@pytest.mark.timeout(180)
def test_processes_starting_at_once_on_a_fresh_database_create_its_tables_once(
    postgres_server_url: str, run_two: TwoProcesses
):
    from postgres_server import new_database

    urls = [new_database(postgres_server_url, f"fresh_{n}") for n in range(4)]
    assert run_two(_first_use_worker, urls) == [len(urls), len(urls)]
    for url in urls:
        assert _scalar(url, "SELECT count(*) FROM source_freshness") == 0
        assert _scalar(url, "SELECT count(*) FROM vectors") == 0


@pytest.mark.timeout(60)
def test_caches_read_sqlite_files_made_by_earlier_releases(tmp_path: Path):
    # The tables exactly as earlier releases created them by hand.
    old_vectors = tmp_path / "embedding-cache.sqlite3"
    with sqlite3.connect(old_vectors) as db:
        db.execute(
            "CREATE TABLE vectors (chunk_hash TEXT NOT NULL, model_id TEXT NOT NULL, dimension "
            "INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (chunk_hash, model_id)) "
            "WITHOUT ROWID"
        )
        db.execute(
            "INSERT INTO vectors VALUES ('h1', ?, 3, ?)",
            [MODEL, array("f", _vector("k-8")).tobytes()],
        )
    old_verdicts = tmp_path / "document-verdicts.sqlite3"
    with sqlite3.connect(old_verdicts) as db:
        db.execute(
            "CREATE TABLE document_verdicts (text_hash TEXT NOT NULL, detector_key TEXT NOT "
            "NULL, verdict TEXT NOT NULL, PRIMARY KEY (text_hash, detector_key)) WITHOUT ROWID"
        )
        db.execute(
            "INSERT INTO document_verdicts VALUES ('t1', ?, ?)",
            [DETECTOR, verdict_to_json(_verdict("k-14"))],
        )
    vectors, verdicts = VectorCache(old_vectors), VerdictCache(old_verdicts)
    assert vectors.get_many(["h1"], MODEL) == {"h1": _vector("k-8")}
    assert verdicts.get_many(["t1"], DETECTOR) == {"t1": _verdict("k-14")}
    vectors.put_many([("h1", _vector("k-9")), ("h2", _vector("k-2"))], MODEL)
    assert vectors.get_many(["h1", "h2"], MODEL) == {"h1": _vector("k-9"), "h2": _vector("k-2")}
    vectors.close()
    verdicts.close()


@pytest.mark.timeout(30)
def test_cache_url_sends_both_caches_to_the_database(tmp_path: Path):
    from freshkb.core.config import Settings

    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    settings = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", cache_url=url)
    local = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    opened = [open_vector_cache(settings), open_verdict_cache(settings)]
    opened += [open_vector_cache(local), open_verdict_cache(local)]
    for cache in opened:
        cache.close()
    assert [cache.url for cache in opened] == [
        url,
        url,
        f"sqlite:///{tmp_path / 'data' / 'embedding-cache.sqlite3'}",
        f"sqlite:///{tmp_path / 'cache' / 'screening' / 'document-verdicts.sqlite3'}",
    ]


POLICIES_CONFIG = """sources:
  - name: sample-policies
    kind: documents
    location: {location}
    owner: tests
    freshness:
      max_age: 2h
"""


@pytest.mark.timeout(600)
def test_second_ingest_from_a_fresh_data_dir_takes_every_vector_and_verdict_from_postgresql(
    store: Any,
    prefect_harness: None,
    weaviate_settings: Any,
    postgres_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    from typer.testing import CliRunner

    from freshkb.cli.app import app
    from freshkb.flows.ingest import ingest_source
    from freshkb.screening.guard import InjectionGuard

    config = tmp_path / "freshkb.yaml"
    config.write_text(POLICIES_CONFIG.format(location=REPO_ROOT / "sample" / "policies"))
    monkeypatch.setenv("FRESHKB_CONFIG", str(config))
    monkeypatch.setenv("FRESHKB_CACHE_URL", postgres_database)
    monkeypatch.setenv("FRESHKB_LEDGER_URL", postgres_database)
    screened: list[int] = []  # texts the injection detector inspected, per call
    inspect = InjectionGuard.inspect_documents

    def counted(guard: InjectionGuard, texts: Any, known: Any = None) -> list[DocumentVerdict]:
        screened.append(len(texts))
        return inspect(guard, texts, known)

    monkeypatch.setattr(InjectionGuard, "inspect_documents", counted)

    monkeypatch.setenv("FRESHKB_DATA_DIR", str(tmp_path / "worker-1"))
    first = ingest_source("sample-policies", str(config))
    assert first.status == "completed", first.error
    assert first.documents_new >= 5 and first.embeddings_computed > 0
    first_screened = sum(screened)
    assert first_screened > 0
    # Every vector and verdict went to PostgreSQL (a fallback to SQLite would leave it empty).
    vectors = first.embeddings_computed + first.passages_embedded  # chunks' and passages'
    assert first.passages_embedded > 0
    assert _scalar(postgres_database, "SELECT count(*) FROM vectors") == vectors
    assert _scalar(postgres_database, "SELECT count(*) FROM document_verdicts") == first_screened

    # Another worker: its own empty data directory, and an index without the source's objects.
    empty_index_and_ledger(weaviate_settings)
    screened.clear()
    monkeypatch.setenv("FRESHKB_DATA_DIR", str(tmp_path / "worker-2"))
    second = ingest_source("sample-policies", str(config))
    assert second.status == "completed", second.error
    assert second.documents_new == first.documents_new
    assert second.chunks_embedded == first.chunks_embedded > 0
    assert second.embeddings_computed == 0
    assert second.embeddings_cached == second.chunks_embedded
    assert second.passages_embedded == 0  # the passages too
    assert sum(screened) == 0, "every verdict comes from the shared cache"
    for worker in ("worker-1", "worker-2"):
        assert not (tmp_path / worker / "embedding-cache.sqlite3").exists()
        assert not (tmp_path / worker / "ledger.sqlite3").exists()

    # Both runs are in the shared ledger, and `freshkb status` reads it there.
    status = CliRunner().invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    (policies,) = json.loads(status.stdout)
    assert policies["name"] == "sample-policies"
    assert (policies["state"], policies["last_status"]) == ("fresh", "completed")
    assert policies["flow_run_id"] == second.flow_run_id
    ledger = Ledger(postgres_database)
    try:
        runs = ledger.runs("sample-policies")
    finally:
        ledger.close()
    assert [run.flow_run_id for run in runs] == [second.flow_run_id, first.flow_run_id]
    assert {run.status for run in runs} == {"completed"}


@pytest.mark.timeout(60)
def test_verdict_cache_on_a_lost_database_costs_a_rescreen_not_the_screen(
    postgres_server_url: str,
):
    from postgres_server import new_database

    down = VerdictCache("postgresql+psycopg://app@127.0.0.1:1/nothing")  # no server there
    assert down.get_many(["k-1"], DETECTOR) == {}
    down.put_many([("k-1", _verdict("k-1"))], DETECTOR)  # logged, not raised

    url = new_database(postgres_server_url, "lost_midway")
    cache = VerdictCache(url)
    cache.put_many([("k-1", _verdict("k-1"))], DETECTOR)
    assert cache.get_many(["k-1"], DETECTOR) == {"k-1": _verdict("k-1")}
    engine = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:  # dropped under the open cache, its sessions killed
        connection.execute(sa.text('DROP DATABASE "lost_midway" WITH (FORCE)'))
    engine.dispose()
    assert cache.get_many(["k-1"], DETECTOR) == {}
    cache.put_many([("k-2", _verdict("k-2"))], DETECTOR)
    cache.close()
