"""Declining what the knowledge base cannot answer (serving/answerability.py): the evidence from
what retrieval returned, the fitted decision, the refuse-or-escalate rule, and reasons that name
the feature that fell short."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import cast

import pytest

from freshkb.core.errors import TransientError
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
from freshkb.serving.names import names, unknown_names
from freshkb.store import search
from freshkb.store.protocol import IndexReader

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
def test_names_are_capitalised_words_inside_a_sentence() -> None:
    assert names("Does the Trailblazer membership include Zanzibar's outlets?") == [
        "Trailblazer",
        "Zanzibar",
    ]
    # first words, acronyms, stopwords, question words and short words are not names
    assert names("Returns: Can I send back a GPS unit? Also, Is it free? Me Too") == []
    assert names("how do i return boots? The Store said no.") == ["Store"]
    assert names("How do I pitch the TrailMaster X4 tent (the SUPERLIGHT one)?") == ["TrailMaster"]
    assert names("A B Cedar Dune Elm Fir Gale Hawk") == ["Cedar", "Dune", "Elm", "Fir"]  # at most 4
    # clauses start after , ; : and line breaks; short lines are greetings and signatures
    signed = "Hello,\nMy claim for the Zanzibar clinic was denied.\nKind Regards,\nJohn Smith"
    assert names(signed) == ["Zanzibar"]
    assert names("Covers Zanzibar outlets?") == ["Zanzibar"]  # a one-line question is kept whole
    assert names("Hi team, Please check it; Thanks: Jane said so") == []
    # search stopwords, days, months, languages, digits; curly quotes, dashes, accents
    assert names("is it open, or But They said on Monday in March, in English? X4 Gore-Tex") == [
        "Gore-Tex"
    ]
    assert names("Is \u201cGold\u201d better than \u2018Silver\u2019 or \u2014Bronze\u2014?") == [
        "Gold",
        "Silver",
        "Bronze",
    ]
    assert names("Does it cover Z\u00fcrich and O'Brien's clinic?") == ["Z\u00fcrich", "O'Brien"]
    assert names("") == [] and names("?") == []


class Keywords:
    """A store that knows some words, or cannot be reached."""

    def __init__(self, known: set[str], down: bool = False):
        self.known, self.down = known, down
        self.asked: list[tuple[tuple[str, ...], str | None, Sequence[str] | None]] = []

    def unknown_terms(
        self,
        terms: Sequence[str],
        *,
        customer_id: str | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[str]:
        self.asked.append((tuple(terms), customer_id, sources))
        if self.down:
            raise TransientError("Weaviate down")
        return [t for t in terms if t.lower() not in self.known]


@pytest.mark.timeout(10)
def test_a_name_no_source_mentions_declines_an_otherwise_answerable_question() -> None:
    keywords = Keywords({"standard"})
    store = cast(IndexReader, keywords)
    question = "Does the Standard plan cover dental at the Zanzibar clinic?"
    unknown = unknown_names(store, question, "C-1", ["plans"])
    assert unknown == ("Zanzibar",)
    assert keywords.asked == [(("Standard", "Zanzibar"), "C-1", ["plans"])]
    passages = [(PLANS[0], 0.7), (PLANS[1], 0.5)]
    assert judge(question, passages, 0.35, MODEL, 0.0).answerable  # without the lookup
    judged = judge(question, passages, 0.35, MODEL, 0.0, unknown)
    assert not judged.answerable and not judged.off_topic
    declined = decline(judged, sources_left_out=False, nothing_found=False)
    assert declined is not None and declined.mode == "escalated"  # in the domain: a human
    assert "no fresh source mentions Zanzibar" in declined.reason
    # a question without names asks nothing; a store that cannot answer leaves the others to decide
    quiet = Keywords(set())
    assert unknown_names(cast(IndexReader, quiet), "does it cover dental?", None, None) == ()
    assert quiet.asked == []
    down = cast(IndexReader, Keywords(set(), down=True))
    assert unknown_names(down, question, None, None) == ()


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


@pytest.mark.timeout(10)
def test_known_terms_expire_and_are_kept_per_set_of_sources(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(search.time, "monotonic", lambda: now[0])
    known = search.KnownTerms(ttl=60.0, size=3)
    known.add("Summit", ["promos", "policies"])
    assert ("summit", ["policies", "promos"]) in known  # any case, any order of the sources
    assert ("Summit", ["policies"]) not in known and ("Summit", None) not in known
    now[0] += 61.0
    assert ("Summit", ["policies", "promos"]) not in known  # a removed document stops counting
    for term in ("a", "b", "c", "d"):
        known.add(term, None)
    assert ("d", None) in known and ("a", None) not in known  # full: started afresh


class FakeCollection:
    """A collection whose keyword search finds the texts holding every word of the query."""

    def __init__(self, texts: dict[str, str]):  # text -> source
        self.texts, self.asked = texts, 0
        self.query = self

    def bm25(self, query: str, filters: object = None, **_: object) -> object:
        self.asked += 1
        sources = getattr(filters, "value", None)
        words = query.lower().replace("-", " ").split()
        hits = [
            t
            for t, source in self.texts.items()
            if all(w in t.lower().split() for w in words) and (sources is None or source in sources)
        ]
        return type("Response", (), {"objects": hits[:1]})()


class FakeLive:
    """Policies, and each customer's own records."""

    def __init__(self, policies: FakeCollection, customers: dict[str, FakeCollection]):
        self.policies, self.customers = policies, customers

    def reader(self, kind: object) -> FakeCollection:
        return self.policies

    def has_customer(self, customer_id: str) -> bool:
        return customer_id in self.customers

    def collection(self, kind: object, customer_id: str | None = None) -> FakeCollection:
        assert customer_id is not None
        return self.customers[customer_id]


@pytest.mark.timeout(10)
def test_unknown_terms_search_policies_then_only_the_customers_own_records() -> None:
    policies = FakeCollection({"winter sale on jackets": "promos", "returns within 60 days": "kb"})
    summit = FakeCollection({"order o-11 summit down bag": "crm"})
    trail = FakeCollection({"order o-21 trail runner pack": "crm"})
    live = cast(search.LiveCollections, FakeLive(policies, {"C-1": summit, "C-2": trail}))
    known = search.KnownTerms()

    def unknown(terms: list[str], **kw: object) -> list[str]:
        return search.unknown_terms(live, terms, known=known, **kw)  # type: ignore[arg-type]

    assert unknown(["Summit", "Winter", "Zanzibar"], customer_id="C-1") == ["Zanzibar"]
    assert unknown(["Summit"], customer_id="C-2") == ["Summit"]  # C-1's find was not kept
    assert unknown(["Summit"]) == ["Summit"]
    asked = policies.asked
    assert unknown(["Winter"], customer_id="C-2") == [] and policies.asked == asked  # kept
    assert unknown(["Winter"], sources=["kb"]) == ["Winter"]  # kept per set of sources
    assert unknown(["Winter"], sources=["promos", "kb"]) == []
    assert unknown(["Winter", "Zanzibar"], sources=[]) == []  # nothing searched: no verdict
    assert unknown(["Winter-Sale"]) == [] and unknown(["Winter-Zanzibar"]) == ["Winter-Zanzibar"]
