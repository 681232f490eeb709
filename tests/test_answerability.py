"""Declining what the knowledge base cannot answer (serving/answerability.py): the evidence from
what retrieval returned, the fitted decision, the refuse-or-escalate rule, and reasons that name
the feature that fell short."""

from __future__ import annotations

import random

import pytest

from freshkb.serving.answerability import (
    FEATURES,
    AnswerabilityModel,
    Evidence,
    decline,
    fit_model,
    gather_evidence,
    judge,
    key_words,
    load_model,
)

PLANS = (
    "Standard plan\nThe Standard plan covers dental cleanings twice a year and vision exams.",
    "Dental coverage\nDental claims are paid within 30 days of receipt.",
)
# A hand-made model: answerable when the passages are relevant and hold the question's words.
MODEL = AnswerabilityModel(
    features=FEATURES,
    means=(0.5, 0.4, 0.7),
    scales=(0.1, 0.1, 0.2),
    weights=(1.0, 1.0, 2.0),
    bias=0.0,
    threshold=0.5,
    answerable_low={"best_relevance": 0.45, "mean_relevance": 0.3, "coverage": 0.75},
)


@pytest.mark.timeout(10)
def test_key_words_leave_out_question_and_stop_words() -> None:
    assert key_words("What does the Standard plan's dental coverage include?") == [
        "standard",
        "plan",
        "dental",
        "coverage",
        "include",
    ]


@pytest.mark.timeout(10)
def test_a_plan_no_passage_mentions_is_missing_and_plurals_still_match() -> None:
    passages = [(text, 0.6) for text in PLANS]
    evidence = gather_evidence("Does the Platinum plan cover dental cleaning?", passages)
    assert evidence.missing == ("platinum",)
    assert evidence.coverage == pytest.approx(4 / 5)  # plan, cover, dental, cleaning found
    assert evidence.best_relevance == 0.6 and evidence.mean_relevance == 0.6


@pytest.mark.timeout(10)
def test_answerable_question_passes_and_a_declined_one_says_which_feature_fell_short() -> None:
    good = judge(
        "Does the Standard plan cover dental?", [(PLANS[0], 0.7), (PLANS[1], 0.5)], 0.35, MODEL
    )
    assert good.answerable and decline(good, False, False) is None
    bad = judge(
        "What does the Platinum Elite plan add?", [(PLANS[0], 0.42), (PLANS[1], 0.3)], 0.35, MODEL
    )
    assert not bad.answerable and not bad.off_topic
    declined = decline(bad, sources_left_out=False, nothing_found=False)
    assert declined is not None and declined.mode == "escalated"  # in the domain: a human
    assert "missing: platinum, elite, add" in declined.reason
    assert "best passage relevance 0.42 < 0.45" in declined.reason


@pytest.mark.timeout(10)
def test_off_topic_is_refused_unless_sources_were_left_out() -> None:
    far = judge("Who painted the ceiling of the chapel?", [(PLANS[0], 0.12)], 0.35, MODEL)
    assert far.off_topic and not far.answerable
    refused = decline(far, sources_left_out=False, nothing_found=False)
    assert refused is not None and refused.mode == "refused"
    assert "best passage relevance 0.12 < 0.35" in refused.reason  # the floor, named
    left_out = decline(far, sources_left_out=True, nothing_found=False)
    assert left_out is not None and left_out.mode == "escalated"  # the answer may be stale
    nothing = decline(judge("x y", [], 0.35, MODEL), sources_left_out=True, nothing_found=True)
    assert nothing is not None and "stale sources were left out" in nothing.reason


@pytest.mark.timeout(10)
def test_passages_holding_none_of_the_questions_words_cannot_answer_it() -> None:
    # Close vectors (0.5, over the floor), but not one key word in common: declined, and a
    # human looks (it may be a paraphrase of something covered), not refused.
    near = judge("Who painted the ceiling of the chapel?", [(PLANS[0], 0.5)], 0.35, MODEL, 0.0)
    assert not near.answerable and not near.off_topic
    escalated = decline(near, sources_left_out=False, nothing_found=False)
    assert escalated is not None and escalated.mode == "escalated"
    assert "no passage holds any of its key words (painted, ceiling, chapel)" in escalated.reason
    # Under the floor as well: plainly elsewhere, refused as off-topic.
    far = judge("Who painted the ceiling of the chapel?", [(PLANS[0], 0.3)], 0.35, MODEL, 0.0)
    assert not far.answerable and far.off_topic
    refused = decline(far, sources_left_out=False, nothing_found=False)
    assert refused is not None and refused.mode == "refused"


@pytest.mark.timeout(10)
def test_the_floor_declines_whatever_the_model_says() -> None:
    lenient = judge("Does the Standard plan cover dental?", [(PLANS[0], 0.3)], 0.35, MODEL, 0.0)
    assert lenient.probability >= 0.0 and not lenient.answerable


@pytest.mark.timeout(30)
def test_fitting_separates_the_classes_and_keeps_false_declines_within_the_bound() -> None:
    rng = random.Random(7)
    rows = [
        (Evidence(rng.gauss(0.6, 0.08), rng.gauss(0.45, 0.08), rng.uniform(0.6, 1.0)), True)
        for _ in range(80)
    ] + [
        (Evidence(rng.gauss(0.35, 0.08), rng.gauss(0.25, 0.08), rng.uniform(0.0, 0.8)), False)
        for _ in range(30)
    ]
    model = fit_model(rows, max_false_declines=0.05)
    assert all(w > 0 for w in model.weights)  # more relevance, more coverage: more answerable
    answerable = [model.probability(e) >= model.threshold for e, ok in rows if ok]
    declined = [model.probability(e) < model.threshold for e, ok in rows if not ok]
    assert answerable.count(False) <= 0.05 * len(answerable)
    assert sum(declined) >= 0.6 * len(declined)
    assert len(model.fitted_on) == 64 and model.answerable_low["coverage"] >= 0.6


@pytest.mark.timeout(10)
def test_the_shipped_model_is_fitted_and_loads() -> None:
    model = load_model()
    assert set(model.features) <= set(FEATURES) and 0.0 < model.threshold < 1.0
    assert len(model.fitted_on) == 64, (
        "ship a fitted model: bench/answer_quality.py --fit-answerability"
    )
    assert "half A" in model.notes
