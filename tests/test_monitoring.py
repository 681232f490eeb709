"""Monitoring of the answer service: hallucination signals, cost, the answer log (privacy,
retention, joins, failing writes) and /metrics, the last over a real answer service (real
Weaviate, real model, Prefect ingests into the ledger, the scripted OpenAI-compatible LLM)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import TEST_LLM_PORT, empty_index_and_ledger
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from scripted_llm import scripted_llm_server
from test_ingest_e2e import documents_source, write_policies
from typer.testing import CliRunner

from freshkb.api import create_app
from freshkb.cli import monitoring
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError
from freshkb.flows.ingest import ingest_source
from freshkb.screening.output import screen_answer
from freshkb.serving.answer_log import (
    AnswerJournal,
    AnswerLog,
    LoggedAnswer,
    answer_log_table,
    digest,
    logged_answer,
)
from freshkb.serving.answerer import OpenAICompatibleAnswerer
from freshkb.serving.costs import answer_cost
from freshkb.serving.prompting import system_prompt
from freshkb.serving.results import AnswerResult, Citation
from freshkb.serving.runtime import Runtime, build_runtime
from freshkb.serving.service import AnswerService
from freshkb.serving.signals import (
    CONTRADICTION,
    LOW_CONFIDENCE,
    NO_CITATIONS,
    UNSUPPORTED,
    draft_signals,
    retrieval_signals,
)

ANSWER_TOKEN = "monitoring-answer"
ADMIN_TOKEN = "monitoring-admin"
# Away from the other test modules' scripted servers (TEST_LLM_PORT + 1 ... + 17, + 30, + 31).
SCRIPTED_PORT = TEST_LLM_PORT + 23
PASSAGE = (
    "Worn footwear cannot be returned. Unworn footwear can be returned within 60 days with a "
    "receipt."
)


# -- hallucination signals -----------------------------------------------------------------------


def signals_of(answer: str, cited: tuple[str, ...] | None = None) -> list[str]:
    """The draft signals of an answer over the one passage S1, screened for real."""
    verdict = screen_answer(answer, cited=[PASSAGE], retrieved=[PASSAGE])
    labels = cited if cited is not None else (("S1",) if "[S1]" in answer else ())
    return draft_signals(labels, answer, {"S1": PASSAGE}, verdict)


@pytest.mark.timeout(60)
def test_signals_flag_uncited_unsupported_and_contradicting_answers_not_grounded_ones() -> None:
    grounded = "Unworn footwear can be returned within 60 days with a receipt [S1]."
    assert signals_of(grounded) == []
    assert signals_of(grounded.replace(" [S1]", "")) == [NO_CITATIONS, UNSUPPORTED]
    added = grounded + " Every parcel also travels to Mars by rocket [S1]."
    assert signals_of(added) == [UNSUPPORTED]
    assert signals_of("Worn footwear can be returned [S1].") == [CONTRADICTION]  # negation
    assert signals_of(grounded.replace("60", "90")) == [CONTRADICTION]  # a figure
    # An answer citing a label it was not given did not cite what it was given.
    assert NO_CITATIONS in signals_of(grounded.replace("S1", "S9"), cited=("S9",))


@pytest.mark.timeout(30)
def test_low_retrieval_confidence_below_the_bar_or_within_its_margin() -> None:
    assert retrieval_signals(0.20, 0.35) == [LOW_CONFIDENCE]
    assert retrieval_signals(0.38, 0.35) == [LOW_CONFIDENCE]  # within the 0.05 margin
    assert retrieval_signals(0.50, 0.35) == []
    assert retrieval_signals(None, 0.35) == []  # retrieval never ran (an injection refused)


# -- cost and prompt versions ------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_answer_cost_prices_tokens_or_else_gpu_time_shared_by_concurrent_calls() -> None:
    tokens = Settings(llm_price_prompt_per_1k=0.5, llm_price_completion_per_1k=1.5)
    assert answer_cost(2000, 400, 3.0, tokens) == pytest.approx(1.0 + 0.6)
    gpu = Settings(llm_gpu_hour_usd=3.6, llm_concurrency=4)
    assert answer_cost(2000, 400, 10.0, gpu) == pytest.approx(3.6 * 10 / 3600 / 4)
    assert answer_cost(2000, 400, 10.0, Settings()) == 0.0


@pytest.mark.timeout(30)
def test_a_missing_prompt_version_is_a_config_error_naming_the_file() -> None:
    with pytest.raises(ConfigError, match=r"serving/data/prompts/answer-v9\.txt.*answer-v1"):
        system_prompt("answer-v9")
    with pytest.raises(ConfigError, match="answer-v9"):
        OpenAICompatibleAnswerer(Settings(prompt_version="answer-v9"))


# -- the answer log ------------------------------------------------------------------------------


def a_result(mode: str = "normal") -> AnswerResult:
    """An answer as the service returns it, with a citation and a question vector."""
    result = AnswerResult(
        answer_id=f"a-{mode}-{datetime.now(UTC).timestamp()}", answer="x", mode=mode
    )
    result.citations = [Citation("c-1", "S1", "kb", "returns.md", "Returns", 2, None, "run-7")]
    result.trace.question_vector = [0.25, -0.5, 1.0]
    result.tokens = {"prompt": 120, "completion": 30}
    return result


@pytest.mark.timeout(30)
def test_the_log_keeps_the_question_as_text_or_only_its_hash_and_hashes_the_customer() -> None:
    kept = logged_answer(a_result(), "Can I return boots?", "C-7", 0.25, questions="text")
    hashed = logged_answer(a_result(), "Can I return boots?", "C-7", 0.25, questions="hash")
    assert kept.question == "Can I return boots?" and hashed.question is None
    assert kept.question_hash == hashed.question_hash == digest("Can I return boots?")
    assert hashed.customer_hash == digest("C-7") and "C-7" not in json.dumps(hashed.to_dict())
    keyed = logged_answer(a_result(), "Can I return boots?", "C-7", 0.25, "hash", key=b"k1")
    other = logged_answer(a_result(), "Can I return boots?", "C-7", 0.25, "hash", key=b"k2")
    assert keyed.customer_hash == digest("C-7", b"k1") != other.customer_hash != digest("C-7")
    assert hashed.citations[0]["flow_run_id"] == "run-7" and hashed.latency_ms == 250.0
    assert hashed.question_vector is not None and hashed.question_vector.tolist() == [
        0.25,
        -0.5,
        1.0,
    ]


@pytest.mark.timeout(60)
def test_retention_prunes_at_start_then_at_most_hourly(tmp_path: Path) -> None:
    log = AnswerLog(f"sqlite:///{tmp_path / 'ops.sqlite3'}", retention_days=30)
    old = logged_answer(a_result(), "old question", None, 0.1)
    log.record(replace(old, answered_at=datetime.now(UTC) - timedelta(days=31)))
    journal = AnswerJournal(log)  # the service starts: the old answer goes
    assert log.find(old.answer_id) is None
    assert journal.record(a_result(), "new question", None, 0.1)
    later = replace(old, answer_id="later", answered_at=datetime.now(UTC) - timedelta(days=40))
    log.record(later)
    assert journal.prune_if_due() == 0 and log.find("later") is not None  # within the hour
    assert journal.prune_if_due(datetime.now(UTC) + timedelta(hours=1)) == 1
    journal.close()


@pytest.mark.timeout(60)
def test_a_failed_log_write_is_counted_not_raised(tmp_path: Path) -> None:
    log = AnswerLog(f"sqlite:///{tmp_path / 'ops.sqlite3'}")
    answer_log_table.drop(log.engine)  # every write now fails
    journal = AnswerJournal(log)
    assert journal.record(a_result(), "question", None, 0.1) is False
    assert journal.failures == 1
    journal.close()


@pytest.mark.timeout(60)
def test_cost_command_projects_the_month_and_fails_over_the_slo_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    log = AnswerLog(url)
    for n, (prompt, completion) in enumerate([(1000, 200), (3000, 600), (0, 0)]):
        entry = logged_answer(a_result(), f"q{n}", None, 0.1)
        log.record(replace(entry, prompt_tokens=prompt, completion_tokens=completion))
    log.close()
    (tmp_path / "slo.yaml").write_text(
        "volume: {queries_per_day: 1000}\n"
        "targets:\n  cost_per_query_usd: {max: 0.01}\n  monthly_budget_usd: {max: 300}\n"
    )
    config = tmp_path / "freshkb.yaml"
    config.write_text(
        f"settings:\n  ledger_url: {url}\n  llm_price_prompt_per_1k: 0.003\n"
        "  llm_price_completion_per_1k: 0.015\nsources: []\n"
    )
    app = typer.Typer()
    app.command("cost")(monitoring.cost)
    app.command("unused")(lambda: None)  # two commands, so typer keeps the name
    run = CliRunner().invoke(app, ["cost", "--config", str(config), "--json"])
    assert run.exit_code == 0, run.output
    figures = json.loads(run.stdout)
    # Means per answer: 4000/3 prompt and 800/3 completion tokens.
    per_query = (4000 / 3 * 0.003 + 800 / 3 * 0.015) / 1000
    assert figures["answers"] == 3
    assert figures["cost_per_query_usd"] == pytest.approx(per_query)
    assert figures["monthly_cost_usd"] == pytest.approx(per_query * 1000 * 30)
    assert {t["name"]: t["status"] for t in figures["targets"]} == {
        "cost_per_query_usd": "PASS",
        "monthly_budget_usd": "PASS",
    }
    over = CliRunner().invoke(
        app, ["cost", "--config", str(config), "--queries-per-day", "100000", "--json"]
    )
    assert over.exit_code == 1, over.output
    statuses = {t["name"]: t["status"] for t in json.loads(over.stdout)["targets"]}
    assert statuses["monthly_budget_usd"] == "FAIL"


# -- over a real answer service -----------------------------------------------------------------


def scrape(api: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by name and labels."""
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value, 0 when it is absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def auth(token: str) -> dict[str, str]:
    """Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def monitored(
    weaviate_settings: Any, prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    """An answer service over one ingested source, its LLM the scripted one, with token prices
    so answers cost something."""
    empty_index_and_ledger(weaviate_settings)
    policies = tmp_path_factory.mktemp("monitoring-policies")
    write_policies(policies)
    assert ingest_source(source_config=documents_source(policies, "mon-kb")).completed
    with scripted_llm_server(SCRIPTED_PORT) as base_url:
        settings = Settings(
            llm_base_url=base_url,
            llm_model="grounded",
            api_tokens={ANSWER_TOKEN: "answer", ADMIN_TOKEN: "admin"},
            llm_price_prompt_per_1k=0.002,
            llm_price_completion_per_1k=0.01,
        )
        runtime = build_runtime(settings)
        yield runtime
        runtime.close()


def on_model(runtime: Runtime, behaviour: str, journal: AnswerJournal | None = None) -> TestClient:
    """An API over the same service parts, asking the scripted model `behaviour`."""
    base = runtime.service
    settings = base.settings.model_copy(update={"llm_model": behaviour})
    service = AnswerService(
        settings,
        base.store,
        base.embedder,
        base.ledger,
        base.escalations,
        OpenAICompatibleAnswerer(settings),
        base.guard,
        journal or base.journal,
    )
    return TestClient(create_app(settings, service))


QUESTION = "How many days do I have to return unworn footwear?"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_metrics_move_and_each_logged_answer_joins_its_feedback_and_escalation(
    monitored: Runtime,
) -> None:
    api = on_model(monitored, "grounded")
    before = scrape(api)
    assert value(before, "freshkb_answers_total", mode="normal") == 0

    answered = api.post(
        "/v1/answer", json={"question": QUESTION, "customer_id": "C-77"}, headers=auth(ANSWER_TOKEN)
    ).json()
    assert answered["mode"] == "normal" and answered["signals"] == [], answered["reasons"]
    assert (answered["model"], answered["prompt_version"]) == ("grounded", "answer-v1")
    assert answered["embedding_model"] and answered["cost_usd"] > 0
    assert answered["best_relevance"] >= monitored.service.settings.answer_min_relevance
    api.post(
        "/v1/feedback",
        json={"answer_id": answered["answer_id"], "helpful": False, "comment": "vague"},
        headers=auth(ANSWER_TOKEN),
    )
    logged = api.get(f"/v1/answers/{answered['answer_id']}", headers=auth(ADMIN_TOKEN))
    assert logged.status_code == 200, logged.text
    row = logged.json()
    journal = monitored.service.journal
    assert journal is not None and len(journal.key) == 64  # the installation's own key
    assert row["question"] == QUESTION and row["customer_hash"] == digest("C-77", journal.key)
    assert row["customer_hash"] != digest("C-77")  # not recoverable by hashing guesses
    assert "C-77" not in logged.text
    assert row["citations"] and all(c["flow_run_id"] for c in row["citations"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        answered["tokens"]["prompt"],
        answered["tokens"]["completion"],
    )
    assert row["cost_usd"] == answered["cost_usd"] and row["latency_ms"] > 0
    assert [(f["helpful"], f["comment"]) for f in row["feedback"]] == [(False, "vague")]
    assert row["credential"]["scope"] == "answer" and row["escalation"] is None
    vector = monitored.service.journal.log.find(answered["answer_id"]).question_vector  # type: ignore[union-attr]
    assert vector is not None and vector.shape == (384,)
    assert (
        api.get(f"/v1/answers/{answered['answer_id']}", headers=auth(ANSWER_TOKEN)).status_code
        == 403
    )

    off_topic = api.post(
        "/v1/answer",
        json={"question": "Who wrote the theory of relativity?"},
        headers=auth(ANSWER_TOKEN),
    ).json()
    assert off_topic["mode"] == "refused", off_topic["reasons"]
    assert off_topic["signals"] == [LOW_CONFIDENCE]

    escalating = on_model(monitored, "insufficient")
    escalated = escalating.post(
        "/v1/answer", json={"question": QUESTION}, headers=auth(ANSWER_TOKEN)
    ).json()
    assert escalated["mode"] == "escalated"
    joined = api.get(f"/v1/answers/{escalated['answer_id']}", headers=auth(ADMIN_TOKEN)).json()
    assert joined["escalation"]["id"] == escalated["escalation_id"]
    assert joined["escalation"]["status"] == "open"

    inventing = on_model(monitored, "unsupported")
    invented = inventing.post(
        "/v1/answer", json={"question": QUESTION}, headers=auth(ANSWER_TOKEN)
    ).json()
    assert invented["mode"] == "degraded" and UNSUPPORTED in invented["signals"]

    after = scrape(api)
    assert value(after, "freshkb_answers_total", mode="normal") == 1
    assert value(after, "freshkb_answers_total", mode="refused") == 1
    assert value(after, "freshkb_answers_cited_total", mode="normal") == 1
    assert value(after, "freshkb_hallucination_signals_total", signal=LOW_CONFIDENCE) == 1
    assert value(after, "freshkb_llm_tokens_total", kind="prompt") == answered["tokens"]["prompt"]
    assert value(after, "freshkb_answer_cost_usd_total") == pytest.approx(answered["cost_usd"])
    assert value(after, "freshkb_answer_stage_seconds_count", stage="llm") == 1
    assert value(after, "freshkb_llm_calls_total", outcome="ok") == 1
    assert value(after, "freshkb_llm_circuit_open") == 0
    assert value(after, "freshkb_answer_log_write_failures_total") == 0
    # Latency by route template: the answer ids are not in the labels.
    requests = {labels for name, labels in after if name == "freshkb_http_requests_total"}
    routes = {dict(labels)["route"] for labels in requests}
    assert {"/v1/answer", "/v1/feedback", "/v1/answers/{answer_id}", "/metrics"} <= routes
    assert (
        value(
            after,
            "freshkb_http_requests_total",
            method="GET",
            route="/v1/answers/{answer_id}",
            status="403",
        )
        == 1
    )
    assert (
        value(
            after, "freshkb_http_request_duration_seconds_count", method="POST", route="/v1/answer"
        )
        == 2
    )
    # The other apps counted their own answers, in registries of their own.
    assert value(scrape(escalating), "freshkb_answers_total", mode="escalated") == 1
    assert value(scrape(inventing), "freshkb_hallucination_signals_total", signal=UNSUPPORTED) == 1


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_answer_whose_log_write_fails_is_still_served_and_counted(
    monitored: Runtime, tmp_path: Path
) -> None:
    broken = AnswerLog(f"sqlite:///{tmp_path / 'broken.sqlite3'}")
    answer_log_table.drop(broken.engine)
    api = on_model(monitored, "grounded", AnswerJournal(broken))
    answered = api.post("/v1/answer", json={"question": QUESTION}, headers=auth(ANSWER_TOKEN))
    assert answered.status_code == 200 and answered.json()["mode"] == "normal"
    assert value(scrape(api), "freshkb_answer_log_write_failures_total") == 1
    broken.close()


@pytest.mark.timeout(30)
def test_logged_answer_rows_read_back_whole(tmp_path: Path) -> None:
    """Guard for the table and the record agreeing, field for field (llm_seconds included)."""
    log = AnswerLog(f"sqlite:///{tmp_path / 'ops.sqlite3'}")
    entry = replace(logged_answer(a_result(), "q", "C-1", 0.5), llm_seconds=1.25)
    log.record(entry)
    found = log.find(entry.answer_id)
    assert isinstance(found, LoggedAnswer)
    assert found.to_dict() == entry.to_dict()
    log.close()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ledger_metrics_after_ingests_show_freshness_runs_and_validation_failures(
    monitored: Runtime, tmp_path: Path
) -> None:
    # Last in the module: the failed source it adds is left out of every later answer.
    api = on_model(monitored, "grounded")
    assert value(scrape(api), "freshkb_validation_failures_total", source="mon-gated") == 0
    write_policies(tmp_path)
    gated = {**documents_source(tmp_path, "mon-gated"), "expectations": {"min_documents": 50}}
    assert ingest_source(source_config=gated).status == "failed"
    samples = scrape(api)
    assert value(samples, "freshkb_ledger_up") == 1
    assert value(samples, "freshkb_source_state", source="mon-kb", state="fresh") == 1
    assert value(samples, "freshkb_source_state", source="mon-gated", state="failed") == 1
    lag = value(samples, "freshkb_source_freshness_lag_seconds", source="mon-kb", kind="documents")
    assert 0 < lag < 3600
    assert value(samples, "freshkb_source_freshness_sla_seconds", source="mon-kb") == 86400
    assert value(samples, "freshkb_ingest_runs_total", source="mon-kb", status="completed") == 1
    assert value(samples, "freshkb_ingest_runs_total", source="mon-gated", status="failed") == 1
    assert value(samples, "freshkb_validation_failures_total", source="mon-gated") == 1
    assert value(samples, "freshkb_validation_failures_total", source="mon-kb") == 0
    assert value(samples, "freshkb_source_validation_failed", source="mon-gated") == 1
    assert value(samples, "freshkb_source_documents", source="mon-kb", outcome="seen") == 3
    assert value(samples, "freshkb_ingest_run_duration_seconds_count", source="mon-kb") == 1
    assert value(samples, "freshkb_ingest_last_run_duration_seconds", source="mon-kb") > 0


@pytest.mark.timeout(30)
def test_the_digest_key_is_made_once_owner_only_unless_configured(tmp_path: Path) -> None:
    from freshkb.serving.answer_log import HASH_KEY_FILE, hash_key

    made = hash_key(None, tmp_path)
    assert len(made) == 64 and hash_key(None, tmp_path) == made
    assert (tmp_path / HASH_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert hash_key("shared-by-replicas", tmp_path) == b"shared-by-replicas"
