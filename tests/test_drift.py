"""Drift between a baseline window and a recent one of the answer log, over question vectors
from the real packaged MiniLM embedder: a planted new topic is flagged (with its poor
retrieval), a recent window drawn from the baseline's own topics is not, and the report
carries its plots."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from freshkb.cli.review import drift
from freshkb.core.config import Settings
from freshkb.evaluation.drift import TooFewAnswers, compare
from freshkb.evaluation.drift_windows import read_windows
from freshkb.serving.answer_log import AnswerLog, LoggedAnswer, digest

UNTIL = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

TOPICS = {
    "shipping": [
        "How long does standard shipping take?",
        "When will my parcel be delivered?",
        "Do you ship to Canada?",
        "How much does express delivery cost?",
        "Can I track my shipment?",
        "My package has not arrived yet, where is it?",
        "Which carrier delivers your orders?",
        "Is shipping free on orders over fifty dollars?",
        "Can I change the delivery address after ordering?",
        "Do you deliver on weekends?",
        "Why is my tracking number not working?",
        "How long does international shipping take?",
        "Can my order be shipped overnight?",
        "What happens if the courier loses my parcel?",
        "Do you offer same-day delivery?",
        "How do I pick up a delivery from a locker?",
    ],
    "returns": [
        "How do I return an item?",
        "Can I get a refund for worn boots?",
        "How many days do I have to send something back?",
        "Who pays for return postage?",
        "When will my refund reach my card?",
        "Can I exchange a jacket for a different size?",
        "Do I need the receipt to return a product?",
        "Can I return a sale item?",
        "How do I print a return label?",
        "My refund has not arrived, what should I do?",
        "Can I return a gift without the buyer knowing?",
        "Are opened items refundable?",
        "Can I bring an online order back to a store?",
        "Is there a restocking fee on returns?",
        "How do I swap shoes for another colour?",
        "Will I be refunded the original shipping cost?",
    ],
    "account": [
        "I forgot my password, how do I reset it?",
        "How do I change the email on my account?",
        "Why is my account locked?",
        "How can I delete my account?",
        "I am not receiving the login verification code",
        "How do I update my saved payment card?",
        "Can I turn on two-factor authentication?",
        "How do I sign in with a new phone?",
        "Someone else logged into my account, what do I do?",
        "How do I change my username?",
        "Why does the site say my password is wrong?",
        "How do I unsubscribe from marketing emails?",
        "Where can I see my order history?",
        "How do I merge two accounts?",
        "Can I add a second address to my profile?",
        "How do I log out of all devices?",
    ],
}
# The planted topic: none of the baseline's questions is about it.
NEW_TOPIC = [
    "How many loyalty points do I earn per purchase?",
    "When do my reward points expire?",
    "How do I reach the gold membership tier?",
    "Can I redeem reward points for a discount?",
    "What perks does platinum membership include?",
    "Why were loyalty points missing from my last order?",
    "<b>Can I transfer</b> reward points to a friend?",
    "Do loyalty points count toward the membership tier?",
]
BASELINE = slice(0, 12)  # per topic; the rest is held out for the recent window
HELD_OUT = slice(12, 16)


def entry(question: str, vector: np.ndarray, at: datetime, relevance: float) -> LoggedAnswer:
    """One logged answer to `question`, with its question vector."""
    return LoggedAnswer(
        answer_id=str(uuid.uuid4()),
        answered_at=at,
        question=question,
        question_hash=digest(question),
        customer_hash=None,
        mode="normal",
        answer_chars=180,
        citations=[{"chunk_id": "c", "source": "kb", "document": "faq.md", "page": None}],
        model="scripted",
        prompt_version="answer-v1",
        embedding_model="all-MiniLM-L6-v2",
        best_relevance=relevance,
        latency_ms=400.0,
        timings_ms={},
        prompt_tokens=300,
        completion_tokens=50,
        cost_usd=0.0,
        question_vector=vector,
    )


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    """Every question's vector from the real packaged embedder."""
    from freshkb.embeddings.embedder import get_embedder

    questions = [q for qs in TOPICS.values() for q in qs] + NEW_TOPIC
    settings = Settings()  # the same cached model the other tests load
    model = get_embedder(
        settings.embedding_model, settings.embedding_device, settings.embedding_batch_size
    )
    embedded = model.embed(questions)
    return {q: np.asarray(v, dtype=np.float32) for q, v in zip(questions, embedded, strict=True)}


def fill(log: AnswerLog, vectors: dict[str, np.ndarray], recent: list[tuple[str, float]]) -> None:
    """The baseline: 12 questions of each topic spread over 7 days, each asked twice; the
    recent window: `recent` (question, best relevance) over the last day."""
    baseline = [q for qs in TOPICS.values() for q in qs[BASELINE]] * 2
    start = UNTIL - timedelta(days=8)
    for i, question in enumerate(baseline):
        at = start + timedelta(days=7) * (i + 0.5) / len(baseline)
        log.record(entry(question, vectors[question], at, 0.55 + 0.1 * (i % 3)))
    for i, (question, relevance) in enumerate(recent):
        at = UNTIL - timedelta(days=1) + timedelta(days=1) * (i + 0.5) / len(recent)
        log.record(entry(question, vectors[question], at, relevance))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AnswerLog]:
    """An empty answer log."""
    opened = AnswerLog(f"sqlite:///{tmp_path / 'ops.sqlite3'}")
    yield opened
    opened.close()


def held_out() -> list[tuple[str, float]]:
    """Recent questions drawn from the baseline's topics (not asked in the baseline)."""
    return [(q, 0.6) for qs in TOPICS.values() for q in qs[HELD_OUT]]


@pytest.mark.timeout(180)
def test_recent_window_from_the_baseline_topics_raises_no_topic_flag(
    log: AnswerLog, vectors: dict[str, np.ndarray]
) -> None:
    fill(log, vectors, held_out())
    found = compare(read_windows(log, timedelta(days=7), timedelta(days=1), UNTIL)).report
    assert (found.baseline_answers, found.recent_answers) == (72, 12)
    assert len(found.topics) == 3, [t.label for t in found.topics]
    assert not any(t.flagged for t in found.new_topics), found.new_topics
    figures = {f.name: f for f in found.figures}
    assert not figures["questions outside the baseline topics"].flagged
    assert not any(t.flagged for t in found.topics), found.topics
    assert not [flag for flag in found.flags if "topic" in flag], found.flags
    labels = [set(t.label.split(" / ")) for t in found.topics]
    for words in ({"shipping", "delivery"}, {"account", "password"}, {"return", "refund"}):
        assert any(words & label for label in labels), labels

    with pytest.raises(TooFewAnswers, match="--baseline"):
        compare(read_windows(log, timedelta(days=7), timedelta(days=1), UNTIL - timedelta(days=9)))


@pytest.mark.timeout(180)
def test_planted_new_topic_is_flagged_with_poor_retrieval_in_json_and_html(
    log: AnswerLog,
    vectors: dict[str, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fill(log, vectors, held_out() + [(q, 0.2) for q in NEW_TOPIC])
    log.close()
    monkeypatch.setenv("FRESHKB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FRESHKB_LEDGER_URL", f"sqlite:///{tmp_path / 'ops.sqlite3'}")
    app = typer.Typer()
    app.command()(drift)
    app.command("unused")(lambda: None)  # two commands: typer keeps `drift` as a subcommand
    report_path = tmp_path / "drift.html"
    args = ["drift", "--baseline", "7d", "--recent", "1d", "--until", UNTIL.isoformat()]
    result = CliRunner().invoke(app, [*args, "--report", str(report_path), "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)

    figures = {f["name"]: f for f in found["figures"]}
    outside = figures["questions outside the baseline topics"]
    assert outside["flagged"] is True and outside["recent"] >= 6 / 20, outside
    flagged = [t for t in found["new_topics"] if t["flagged"]]
    assert len(flagged) == 1, found["new_topics"]
    assert {"points", "loyalty", "reward"} & set(flagged[0]["label"].split(" / ")), flagged
    assert flagged[0]["poor_retrieval"] is True and flagged[0]["count"] >= 3
    assert f"new topic with poor retrieval: {flagged[0]['label']}" in found["flags"]

    page = report_path.read_text()
    assert page.count('src="data:image/png;base64,') >= 5
    assert "&lt;b&gt;Can I transfer&lt;/b&gt;" in page and "<b>Can I transfer" not in page
    assert "questions outside the baseline topics" in page


@pytest.mark.timeout(60)
def test_topics_are_numbered_when_the_log_keeps_only_question_hashes(
    log: AnswerLog, vectors: dict[str, np.ndarray]
) -> None:
    fill(log, vectors, held_out())
    windows = read_windows(log, timedelta(days=7), timedelta(days=1), UNTIL)
    hashed = replace(
        windows,
        baseline=[replace(e, question=None) for e in windows.baseline],
        recent=[replace(e, question=None) for e in windows.recent],
    )
    found = compare(hashed)
    assert [t.label for t in found.report.topics] == ["topic 1", "topic 2", "topic 3"]
