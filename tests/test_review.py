"""The human review loop: sampling the answer log into the queue, marks through the CLI and
the API, marks exported as evaluation cases, and the measured hallucination rate."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from freshkb.api.app import create_app
from freshkb.cli.review import review_app
from freshkb.core.config import Settings
from freshkb.evaluation.cases import load_cases
from freshkb.evaluation.review import ReviewItem, ReviewQueue
from freshkb.evaluation.review_results import hallucination_rate, wilson_interval
from freshkb.serving.answer_log import AnswerLog, LoggedAnswer, digest
from freshkb.serving.escalations import EscalationStore
from freshkb.serving.service import AnswerService
from freshkb.store.ledger import Ledger

NOW = datetime.now(UTC)


def logged(
    question: str | None = "How long does delivery take?",
    *,
    at: datetime | None = None,
    mode: str = "normal",
    signals: tuple[str, ...] = (),
    escalation_id: str | None = None,
    citations: list[dict[str, Any]] | None = None,
) -> LoggedAnswer:
    """One answer-log row as the answer service writes it."""
    return LoggedAnswer(
        answer_id=str(uuid.uuid4()),
        answered_at=at or NOW - timedelta(hours=2),
        question=question,
        question_hash=digest(question or "hashed"),
        customer_hash=None,
        mode=mode,
        answer_chars=120,
        citations=citations or [],
        model="scripted",
        prompt_version="answer-v1",
        embedding_model="all-MiniLM-L6-v2",
        best_relevance=0.6,
        latency_ms=350.0,
        timings_ms={"retrieve": 40.0},
        prompt_tokens=300,
        completion_tokens=40,
        cost_usd=0.0,
        signals=list(signals),
        escalation_id=escalation_id,
    )


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[str, AnswerLog, ReviewQueue, EscalationStore]]:
    """An empty operational database with the answer log, the review queue and feedback."""
    url = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    log, queue, escalations = AnswerLog(url), ReviewQueue(url), EscalationStore(url)
    yield url, log, queue, escalations
    for opened in (log, queue, escalations):
        opened.close()


@pytest.mark.timeout(60)
def test_sampling_queues_every_high_risk_answer_plus_n_random_ones_never_twice(
    database: tuple[str, AnswerLog, ReviewQueue, EscalationStore],
) -> None:
    _, log, queue, escalations = database
    plain = [logged(f"plain question {i}") for i in range(30)]
    risky = {
        "low_confidence": [logged(signals=("low_retrieval_confidence",)) for _ in range(2)],
        "escalated": [logged(mode="escalated", escalation_id=str(uuid.uuid4())) for _ in range(2)],
        "negative_feedback": [logged() for _ in range(2)],
        "hallucination_signal": [logged(signals=("unsupported_sentence",)) for _ in range(2)],
    }
    old = [logged(at=NOW - timedelta(days=30), mode="escalated") for _ in range(3)]
    period = plain + [entry for entries in risky.values() for entry in entries]
    for entry in period + old:
        log.record(entry)
    for entry in risky["negative_feedback"]:
        escalations.add_feedback(entry.answer_id, helpful=False, comment="wrong")
    escalations.add_feedback(plain[0].answer_id, helpful=True, comment=None)

    first = queue.draw(log, NOW - timedelta(days=7), NOW, n=10, seed=1)
    assert first.answers == len(period) and len(first.sampled) == 10
    risky_ids = {entry.answer_id: risk for risk, entries in risky.items() for entry in entries}
    assert set(first.high_risk) == set(risky_ids) - set(first.sampled)
    queued = {item.answer_id: item for item in queue.items()}
    assert set(queued) == set(first.sampled) | set(risky_ids)
    assert not {entry.answer_id for entry in old} & set(queued), "outside the period"
    for answer_id, risk in risky_ids.items():
        assert queued[answer_id].risks == [risk]
        assert queued[answer_id].reason == ("sample" if answer_id in first.sampled else risk)

    again = queue.draw(log, NOW - timedelta(days=7), NOW, n=10, seed=1)
    assert not set(again.sampled) & set(first.sampled) and len(again.sampled) == 10
    assert again.high_risk == [], "high-risk answers are queued once"
    rest = queue.draw(log, NOW - timedelta(days=7), NOW, n=1000, seed=3)
    every = queue.items()
    assert len(every) == len({item.answer_id for item in every}) == len(period)
    assert all(item.sampled for item in every), "the whole period has now been drawn"
    assert len(rest.sampled) == len(period) - 20
    assert queue.draw(log, NOW - timedelta(days=7), NOW, n=5).sampled == []


@pytest.mark.timeout(10)
def test_wilson_interval_matches_known_values() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.timeout(10)
def test_rate_counts_only_reviewed_normal_mode_answers_of_the_random_sample() -> None:
    def item(reason: str, mode: str, verdict: str | None, risks: list[str]) -> ReviewItem:
        return ReviewItem(str(uuid.uuid4()), NOW, reason, risks, mode, verdict=verdict)  # type: ignore[arg-type]

    items = [
        *(item("sample", "normal", "correct", []) for _ in range(17)),
        *(item("sample", "normal", "incorrect", []) for _ in range(2)),
        item("sample", "normal", "should_decline", []),
        item("sample", "normal", "incorrect", ["hallucination_signal"]),
        item("sample", "degraded", "incorrect", []),  # not a normal-mode answer
        item("sample", "normal", None, []),  # not reviewed yet
        item("escalated", "escalated", "incorrect", ["escalated"]),
        item("hallucination_signal", "normal", "incorrect", ["hallucination_signal"]),
    ]
    measured = hallucination_rate(items)
    assert (measured.sample.reviewed, measured.sample.incorrect) == (21, 3)
    assert measured.sample.should_decline == 1 and measured.pending == 1
    assert measured.rate == pytest.approx(3 / 21)
    assert (measured.low, measured.high) == pytest.approx(wilson_interval(3, 21))
    assert measured.high_risk["hallucination_signal"].reviewed == 2
    assert measured.high_risk["hallucination_signal"].incorrect == 2
    assert measured.high_risk["escalated"].incorrect == 1


def cli() -> typer.Typer:
    """The review commands as `freshkb review` will mount them."""
    app = typer.Typer()
    app.add_typer(review_app, name="review")
    return app


@pytest.mark.timeout(120)
def test_marks_through_cli_and_api_are_exported_as_cases_the_eval_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRESHKB_DATA_DIR", str(tmp_path / "data"))
    settings = Settings(api_tokens={"adm": "admin", "svc": "answer"})
    url = settings.ledger_database_url
    log = AnswerLog(url)
    page = {"chunk_id": "c1", "source": "kb", "document": "plans/Benefit_Options.pdf", "page": 3}
    wrong = logged("Which plan covers eye exams?", citations=[page])
    decline = logged("Can you recommend a stock to buy?")
    hashed = logged(None, citations=[page])
    unqueued = logged("asked after the sample", at=NOW - timedelta(minutes=1))
    for entry in (wrong, decline, hashed):
        log.record(entry)
    runner = CliRunner()
    drawn = runner.invoke(cli(), ["review", "sample", "--n", "3", "--seed", "7", "--json"])
    assert drawn.exit_code == 0, drawn.output
    assert sorted(json.loads(drawn.stdout)["sampled"]) == sorted(
        e.answer_id for e in (wrong, decline, hashed)
    )
    log.record(unqueued)

    marked = runner.invoke(
        cli(),
        ["review", "mark", wrong.answer_id, "incorrect", "--reviewer", "ana", "--correction",
         "Northwind Plus covers eye exams.[Benefit_Options.pdf#page=3]"],
    )  # fmt: skip
    assert marked.exit_code == 0, marked.output
    refused = runner.invoke(cli(), ["review", "mark", wrong.answer_id, "maybe"])
    assert refused.exit_code == 2 and "correct, incorrect, should_decline" in refused.output

    service = AnswerService(
        settings,
        store=None,  # type: ignore[arg-type]  # the review routes read the operational database only
        embedder=None,  # type: ignore[arg-type]
        ledger=Ledger(url),
        escalations=EscalationStore(url),
        answerer=None,  # type: ignore[arg-type]
        guard=None,  # type: ignore[arg-type]
    )
    api = TestClient(create_app(settings, service))
    admin, answer = {"Authorization": "Bearer adm"}, {"Authorization": "Bearer svc"}
    mark = {"verdict": "should_decline", "note": "financial advice is out of scope"}
    assert api.post(f"/v1/review/{decline.answer_id}", json=mark, headers=answer).status_code == 403
    assert api.get("/v1/review", headers=answer).status_code == 403
    done = api.post(f"/v1/review/{decline.answer_id}", json=mark, headers=admin)
    assert done.status_code == 200, done.text
    assert done.json()["verdict"] == "should_decline" and done.json()["reviewer"].startswith(
        "admin:"
    )
    assert (
        api.post(
            f"/v1/review/{hashed.answer_id}", json={"verdict": "correct"}, headers=admin
        ).status_code
        == 200
    )
    assert api.post(f"/v1/review/{uuid.uuid4()}", json=mark, headers=admin).status_code == 404
    assert api.post(f"/v1/review/{unqueued.answer_id}", json=mark, headers=admin).status_code == 409
    assert (
        api.post(
            f"/v1/review/{wrong.answer_id}", json={"verdict": "nope"}, headers=admin
        ).status_code
        == 422
    )
    pending = api.get("/v1/review", params={"pending": "true"}, headers=admin)
    assert pending.status_code == 200 and pending.json() == []
    listed = api.get("/v1/review", headers=admin).json()
    by_id = {record["answer_id"]: record for record in listed}
    assert by_id[wrong.answer_id]["question"] == "Which plan covers eye exams?"
    assert (
        by_id[wrong.answer_id]["verdict"] == "incorrect"
        and by_id[wrong.answer_id]["reviewer"] == "ana"
    )
    assert by_id[hashed.answer_id]["question"] is None

    exported = runner.invoke(cli(), ["review", "export", str(tmp_path / "cases"), "--json"])
    assert exported.exit_code == 0, exported.output
    summary = json.loads(exported.stdout)
    assert (summary["qa"], summary["out_of_scope"]) == (1, 1)
    assert summary["skipped_question_not_logged"] == 1
    qa_lines = (tmp_path / "cases" / "reviewed_qa.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in qa_lines] == [
        {
            "question": "Which plan covers eye exams?",
            "truth": "Northwind Plus covers eye exams.[Benefit_Options.pdf#page=3]",
        }
    ]
    cases = load_cases(tmp_path / "cases")
    assert [case.question for case in cases.qa] == ["Which plan covers eye exams?"]
    assert [(p.file, p.page) for p in cases.qa[0].pages] == [("Benefit_Options.pdf", 3)]
    assert [case.question for case in cases.out_of_scope] == ["Can you recommend a stock to buy?"]

    rated = runner.invoke(cli(), ["review", "rate", "--json"])
    assert rated.exit_code == 0, rated.output
    assert json.loads(rated.stdout)["sample"] == {
        "reviewed": 3,
        "incorrect": 1,
        "should_decline": 1,
    }
    log.close()
