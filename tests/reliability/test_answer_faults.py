"""Faults on the answer side: the LLM slow, erring, sending garbage or nothing, and the freshness
ledger's database stopped. Real parts throughout: Weaviate, the MiniLM model, a Prefect ingest,
a real (faulty) OpenAI-compatible server on loopback, a real PostgreSQL ledger, real HTTP.

What must hold: every LLM fault gives a quoted answer with citations, naming the fault; after
`llm_breaker_failures` failures in a row the breaker opens and no request reaches the server;
after `llm_breaker_cooldown` one trial goes through, and a healthy server closes the breaker.
With the ledger down, answers are still served from every source, degraded, saying that
freshness could not be checked; /readyz names the ledger; nothing is a 500; all of it recovers
without a restart when the database is back.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TEST_LLM_PORT, empty_index_and_ledger
from test_answer_e2e import served
from test_ingest_e2e import documents_source, write_policies

from freshkb.api import create_app
from freshkb.core.config import Settings
from freshkb.core.report import RunReport
from freshkb.core.sources import parse_source
from freshkb.flows.ingest import ingest_source
from freshkb.serving.answerer import OpenAICompatibleAnswerer
from freshkb.serving.runtime import Runtime, build_runtime
from freshkb.serving.service import (
    EXTRACTIVE_LEAD,
    FRESHNESS_UNKNOWN,
    FRESHNESS_UNKNOWN_NOTE,
    AnswerService,
)
from freshkb.store.ledger import Ledger
from reliability.faulty_llm import FAULTS, FaultyLLM, faulty_llm_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Away from the ports of tests/test_answer_e2e.py and tests/test_api.py (+3 to +7).
FAULTY_PORT, API_PORT, PG_PORT = TEST_LLM_PORT + 10, TEST_LLM_PORT + 11, TEST_LLM_PORT + 12
TOKEN = "faults-answer-token"
QUESTION = "How long does standard shipping take?"
PROMOTIONS = """# Seasonal promotions

## Winter sale

During the winter sale every insulated jacket is 25% off until January 31.
"""
# The cooldown outlasts one answer's retrieval on a busy 2-core machine (a few seconds), so
# the answer right after the breaker opens meets it still open.
LLM_TIMEOUT, BREAKER_FAILURES, BREAKER_COOLDOWN = 1.0, 2, 10.0

# What each fault's reason says, after "LLM unavailable, answered by quoting: LLM endpoint URL".
FAULT_REASON = {
    "slow": "timed out after 1s",
    "trickle": "timed out after 1s",
    "error": "answered HTTP 500",
    "not-json": "not JSON",
    "html": "not JSON",
    "wrong-shape": "without a text answer",
    "empty-body": "sent an empty body",
    "empty-content": "sent an empty answer",
    "hang-up": "disconnected",
}


@pytest.fixture(scope="module")
def corpus(
    weaviate_settings: Any, prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Three policies (source `faults-kb`) and a promotion (source `faults-promos`), ingested
    into an empty index through the real flow."""
    empty_index_and_ledger(weaviate_settings)
    policies, promos = tmp_path_factory.mktemp("faults-kb"), tmp_path_factory.mktemp("promos")
    write_policies(policies)
    (promos / "promotions.md").write_text(PROMOTIONS)
    sources = {"faults-kb": policies, "faults-promos": promos}
    for name, folder in sources.items():
        report = ingest_source(source_config=documents_source(folder, name))
        assert report.completed, (name, report.error)
    return {name: str(folder) for name, folder in sources.items()}


@pytest.fixture(scope="module")
def faulty(corpus: dict[str, str]) -> Iterator[FaultyLLM]:
    """The faulty LLM server for the module."""
    with faulty_llm_server(FAULTY_PORT) as server:
        yield server


def llm_settings(base_url: str, **extra: Any) -> Settings:
    """Settings with a short LLM timeout and a quick breaker."""
    return Settings(
        llm_base_url=base_url,
        llm_model="faulty",
        llm_timeout=LLM_TIMEOUT,
        llm_breaker_failures=BREAKER_FAILURES,
        llm_breaker_cooldown=BREAKER_COOLDOWN,
        api_tokens={TOKEN: "answer"},
        **extra,
    )


@pytest.fixture(scope="module")
def runtime(faulty: FaultyLLM) -> Iterator[Runtime]:
    """The real answer service, its LLM the faulty server."""
    built = build_runtime(llm_settings(faulty.base_url))
    yield built
    built.close()


@pytest.fixture
def with_breaker(runtime: Runtime, faulty: FaultyLLM) -> Iterator[Any]:
    """Make the module's answer service with a new answerer (a closed breaker of the given
    cooldown); the server starts healthy."""
    faulty.mode, faulty.delay = "healthy", 3 * LLM_TIMEOUT
    base = runtime.service
    made: list[OpenAICompatibleAnswerer] = []

    def make(cooldown: float) -> AnswerService:
        settings = base.settings.model_copy(update={"llm_breaker_cooldown": cooldown})
        made.append(OpenAICompatibleAnswerer(settings))
        return AnswerService(
            settings=settings,
            store=base.store,
            embedder=base.embedder,
            ledger=base.ledger,
            escalations=base.escalations,
            answerer=made[-1],
            guard=base.guard,
        )

    yield make
    for answerer in made:
        answerer.close()
    faulty.mode = "healthy"


def open_breaker(service: AnswerService, faulty: FaultyLLM, fault: str) -> float:
    """Fail `llm_breaker_failures` answers in a row with `fault`; when the breaker opened."""
    faulty.mode = fault
    start = faulty.completions
    for n in range(1, BREAKER_FAILURES + 1):
        failed = service.answer(QUESTION)
        assert_quoted(failed, FAULT_REASON[fault])
        assert faulty.completions == start + n
        # The deadline holds even for a reply that trickles in a byte at a time.
        assert failed.timings_ms["llm"] < (LLM_TIMEOUT + 1.5) * 1000
    assert service.answerer.breaker.is_open, "failures in a row open the breaker"  # type: ignore[attr-defined]
    return time.monotonic()


def wait_out_cooldown(opened: float) -> None:
    """Sleep until the cooldown since `opened` has passed."""
    time.sleep(max(0.0, opened + BREAKER_COOLDOWN - time.monotonic()) + 0.2)


def assert_quoted(result: Any, fault_text: str) -> None:
    """A degraded answer quoting the shipping policy, with citations, naming the fault."""
    assert result.mode == "degraded", result.reasons
    assert result.answer.startswith(EXTRACTIVE_LEAD)
    assert "3 to 5 business days" in result.answer
    assert result.citations and result.citations[0].document == "shipping.md"
    reasons = " | ".join(result.reasons)
    assert "LLM unavailable, answered by quoting" in reasons, reasons
    assert fault_text in reasons, reasons


def test_healthy_server_gives_a_normal_answer(with_breaker: Any, faulty: FaultyLLM) -> None:
    before = faulty.completions
    result = with_breaker(BREAKER_COOLDOWN).answer(QUESTION)
    assert result.mode == "normal", result.reasons
    assert "3 to 5 business days" in result.answer and result.citations
    assert faulty.completions == before + 1


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault", FAULTS)
def test_llm_fault_gives_quoted_answers_and_opens_the_breaker(
    fault: str, with_breaker: Any, faulty: FaultyLLM
) -> None:
    service = with_breaker(300.0)
    start = faulty.completions
    open_breaker(service, faulty, fault)
    shunned = service.answer(QUESTION)
    assert_quoted(shunned, "circuit open")
    assert faulty.completions == start + BREAKER_FAILURES, "an open breaker calls nobody"
    assert shunned.timings_ms["llm"] < 100, "and waits for nobody"


@pytest.mark.timeout(600)
def test_after_the_cooldown_one_trial_reaches_a_healthy_server_and_closes_the_breaker(
    with_breaker: Any, faulty: FaultyLLM
) -> None:
    service = with_breaker(BREAKER_COOLDOWN)
    start = faulty.completions
    opened = open_breaker(service, faulty, "slow")
    assert_quoted(service.answer(QUESTION), "circuit open")
    wait_out_cooldown(opened)
    faulty.mode = "healthy"
    recovered = service.answer(QUESTION)
    assert faulty.completions == start + BREAKER_FAILURES + 1, "one trial after the cooldown"
    assert recovered.mode == "normal", recovered.reasons
    assert not service.answerer.breaker.is_open
    assert service.answer(QUESTION).mode == "normal"
    assert faulty.completions == start + BREAKER_FAILURES + 2, "closed: calls flow again"


@pytest.mark.timeout(600)
def test_failed_trial_after_the_cooldown_reopens_the_breaker_at_once(
    with_breaker: Any, faulty: FaultyLLM
) -> None:
    service = with_breaker(BREAKER_COOLDOWN)
    start = faulty.completions
    opened = open_breaker(service, faulty, "error")
    wait_out_cooldown(opened)
    trial = service.answer(QUESTION)
    assert_quoted(trial, "answered HTTP 500")
    assert faulty.completions == start + BREAKER_FAILURES + 1
    again = service.answer(QUESTION)
    assert_quoted(again, "circuit open")
    assert faulty.completions == start + BREAKER_FAILURES + 1, "reopened: no second trial"


def test_llm_faults_over_http_are_quoted_answers_and_readyz_shows_the_open_breaker(
    runtime: Runtime, faulty: FaultyLLM
) -> None:
    app = create_app(runtime.service.settings, runtime.service, runtime.ready)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with served(app, API_PORT) as url, httpx.Client(base_url=url, timeout=60) as client:
            faulty.mode = "not-json"
            for _ in range(BREAKER_FAILURES):
                response = client.post("/v1/answer", json={"question": QUESTION}, headers=headers)
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["mode"] == "degraded" and body["citations"], body
                assert body["answer"].startswith(EXTRACTIVE_LEAD)
            opened = time.monotonic()
            ready = client.get("/readyz")
            assert ready.status_code == 200, "the LLM is reported, not required"
            assert ready.json()["llm_circuit_open"] is True
            wait_out_cooldown(opened)
            faulty.mode = "healthy"
            healed = client.post("/v1/answer", json={"question": QUESTION}, headers=headers)
            assert healed.json()["mode"] == "normal", healed.json()["reasons"]
            assert client.get("/readyz").json()["llm_circuit_open"] is False
    finally:
        faulty.mode = "healthy"


# -- the ledger's database stopped ------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    assert found[-1], f"PostgreSQL's {name} is not installed: apt-get install postgresql"
    return found[-1]


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; run it as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class Postgres:
    """A throw-away PostgreSQL cluster that a test can stop and start again."""

    def __init__(self, port: int):
        # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="freshkb-faults-pg-"))
        self.data, self.port = self.root / "data", port
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        initdb = [_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "app"]
        subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
        self.url = f"postgresql+psycopg://app@127.0.0.1:{port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        command = [_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w"]
        command += ["start", "-l", str(self.root / "pg.log")]
        subprocess.run(_as_postgres(command), check=True, capture_output=True)

    def stop(self) -> None:
        """Stop the server (fast shutdown: connections are cut)."""
        command = [_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres(command), check=False, capture_output=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the ledger, removed after the module."""
    server = Postgres(PG_PORT)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


def record_sync(ledger: Ledger, name: str, at: datetime) -> None:
    """The ledger says `name` last synced successfully at `at` (its SLA: one day)."""
    config = parse_source(
        {"name": name, "kind": "documents", "location": "/", "freshness": {"max_age": "1d"}}
    )
    run = ledger.record_attempt(config, "faults-test", at)
    ledger.record_result(run, RunReport(source=name, kind="documents"), at)


@pytest.fixture(scope="module")
def pg_runtime(faulty: FaultyLLM, postgres: Postgres) -> Iterator[Runtime]:
    """The answer service with its ledger (and escalations) in PostgreSQL: the policies are
    fresh there, the promotions stale, so answers leave the promotions out."""
    built = build_runtime(llm_settings(faulty.base_url, ledger_url=postgres.url))
    record_sync(built.service.ledger, "faults-kb", datetime.now(UTC))
    record_sync(built.service.ledger, "faults-promos", datetime.now(UTC) - timedelta(days=2))
    yield built
    built.close()


SALE = "Is there a discount on insulated jackets in the winter sale?"


@pytest.mark.timeout(600)
def test_ledger_down_answers_from_every_source_saying_freshness_is_unknown_then_recovers(
    pg_runtime: Runtime, postgres: Postgres, faulty: FaultyLLM
) -> None:
    service = pg_runtime.service
    faulty.mode = "healthy"
    before = service.answer(SALE)
    assert [s.name for s in before.stale_sources] == ["faults-promos"]
    assert all(c.source != "faults-promos" for c in before.citations)

    postgres.stop()
    try:
        during = service.answer(QUESTION)
        assert during.mode == "degraded", during.reasons
        assert "3 to 5 business days" in during.answer and during.citations
        assert during.answer.endswith(FRESHNESS_UNKNOWN_NOTE)
        unknown = [r for r in during.reasons if r.startswith(FRESHNESS_UNKNOWN)]
        assert unknown and "ledger unavailable" in unknown[0], during.reasons
        hits, left_out = service.search(SALE)
        assert left_out == [] and "faults-promos" in {hit.source for hit in hits}, (
            "with freshness unknown, every source is searched"
        )
        sale = service.answer(SALE)
        assert sale.mode == "degraded" and sale.stale_sources == []
        assert any(r.startswith(FRESHNESS_UNKNOWN) for r in sale.reasons)
        ready = pg_runtime.ready()
        assert ready["ready"] is False and "down" in str(ready["ledger"])
        assert ready["weaviate"] is True
    finally:
        postgres.start()

    after = service.answer(SALE)
    assert not any(r.startswith(FRESHNESS_UNKNOWN) for r in after.reasons), after.reasons
    assert [s.name for s in after.stale_sources] == ["faults-promos"], "the ledger is read again"
    assert pg_runtime.ready()["ready"] is True


@pytest.mark.timeout(600)
def test_ledger_down_over_http_never_gives_a_500_and_readyz_names_the_ledger(
    pg_runtime: Runtime, postgres: Postgres, faulty: FaultyLLM
) -> None:
    faulty.mode = "healthy"
    app = create_app(pg_runtime.service.settings, pg_runtime.service, pg_runtime.ready)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with served(app, API_PORT) as url, httpx.Client(base_url=url, timeout=60) as client:
        postgres.stop()
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "down" in str(ready.json()["ledger"])
            sources = client.get("/v1/sources", headers=headers)
            assert sources.status_code == 503 and sources.headers["Retry-After"]
            assert "operational database unavailable" in sources.json()["detail"]
            answer = client.post("/v1/answer", json={"question": QUESTION}, headers=headers)
            # The answer is made (freshness unknown); recording which credential asked needs
            # the same database, so the route either serves it or asks to retry, never a 500.
            if answer.status_code == 200:
                assert answer.json()["mode"] == "degraded"
                assert any(FRESHNESS_UNKNOWN in r for r in answer.json()["reasons"])
            else:
                assert answer.status_code == 503 and answer.headers["Retry-After"]
                assert "database unavailable" in answer.json()["detail"]
            search = client.get("/v1/search", params={"q": QUESTION}, headers=headers)
            assert search.status_code == 200 and search.json()["hits"]
        finally:
            postgres.start()
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/sources", headers=headers).status_code == 200
        healed = client.post("/v1/answer", json={"question": SALE}, headers=headers)
        assert healed.status_code == 200, healed.text
        assert [s["name"] for s in healed.json()["stale_sources"]] == ["faults-promos"]
        assert not any(FRESHNESS_UNKNOWN in r for r in healed.json()["reasons"])
