"""Whether the retrieved passages can answer a question: a small, fitted decision over what
retrieval returned, and in words why a declined question was declined.

The evidence, with no model work beyond the question's embedding that retrieval already did:
- `best_relevance`: the cosine of the best passage with the question;
- `mean_relevance`: the mean cosine of the passages (up to five): one lucky chunk scores high
  alone, a topic the knowledge base covers brings several;
- `coverage`: the share of the question's key words (no stopwords or question words, compared
  by a crude stem) that the passages' titles and texts contain; `missing` names the others, such
  as a plan name no passage mentions.

The decision is a logistic regression over some of those features, fitted once on half A of
the dev cases (`bench/answer_quality.py --fit-answerability`) and shipped in
serving/data/answerability.json with the hash of what it was fitted on; a question is answerable
when its probability reaches `answer_min_answerability`. That setting is off (None) by default:
the threshold fitted on the benefits questions (the file's `threshold`, a best-passage
relevance of about 0.56) declined 2 of 5 hand-written answerable questions over sample/ and
every answerable e-mail question of the dev cases, so it does not carry beyond the questions it
was fitted on; set it (e.g. to the file's threshold) for a corpus and question style like those.

A question is declined when its best passage's relevance is under `answer_min_relevance` (the
floor it always had), when the model finds it unanswerable, when no key word of it appears
in any passage, or when it names something the searchable sources never mention
(serving/names.py: a plan, a product or a place that no chunk of the fresh sources and none of
the asking customer's records contains).

Refuse or escalate, the rule `decline` applies: a declined question is off-topic, and refused,
when it is far from everything the knowledge base holds (its best passage's relevance under
OFF_TOPIC_SHARE of `answer_min_relevance`, or none of its key words in any passage and its best
passage under the floor); otherwise it is in the knowledge base's domain but not answered by
it, and escalated to a human, who can. With
sources left out as stale, a human always gets it: the answer may be in what was left out.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path

from freshkb.core.config import Settings
from freshkb.serving.grounding import STOPWORDS, word_list
from freshkb.store.protocol import SearchHit

FEATURES = ("best_relevance", "mean_relevance", "coverage")
OFF_TOPIC_SHARE = 0.6  # of answer_min_relevance: below it, nothing retrieved is even near
MODEL_FILE = "data/answerability.json"
_WORD = re.compile(r"[a-z0-9]+")
_TOP = 5  # passages the mean relevance is taken over
_STEM = 5  # letters a stem keeps: "deductibles" and "deductible" meet, "plan" stays "plan"
_LABELS = {
    "best_relevance": "best passage relevance",
    "mean_relevance": "mean passage relevance",
    "coverage": "share of the question's key words found in the passages",
}


@cache
def question_words() -> frozenset[str]:
    """Words that ask rather than say what about (serving/data/question_words.txt)."""
    return word_list("question_words.txt") | STOPWORDS


def stem(word: str) -> str:
    """A crude stem: a plural s dropped, then the first five letters."""
    if word.endswith("s") and len(word) > 3 and not word.endswith("ss"):
        word = word[:-1]
    return word[:_STEM]


def key_words(question: str) -> list[str]:
    """The question's words that say what it is about, in order, without repeats."""
    words = _WORD.findall(question.lower().replace("\u2019", "'").replace("'s", ""))
    return list(dict.fromkeys(w for w in words if w not in question_words() and len(w) > 1))


@dataclass(frozen=True)
class Evidence:
    """What retrieval says about a question's answerability (see the module docstring)."""

    best_relevance: float
    mean_relevance: float
    coverage: float
    missing: tuple[str, ...] = ()
    unknown_names: tuple[str, ...] = ()  # names the searchable sources never mention

    def values(self, names: Sequence[str]) -> list[float]:
        """The named features' values, in order."""
        return [float(getattr(self, name)) for name in names]


def gather_evidence(
    question: str,
    passages: Sequence[tuple[str, float | None]],
    unknown: Sequence[str] = (),
) -> Evidence:
    """The evidence from the passages retrieved for a question, best first: (text with its
    title, relevance) each, and the names no fresh source mentions (`unknown_names`)."""
    relevances = [r or 0.0 for _, r in passages]
    top = sorted(relevances, reverse=True)[:_TOP]
    vocabulary = {stem(w) for w in {w for text, _ in passages for w in _WORD.findall(text.lower())}}
    words = key_words(question)
    missing = tuple(w for w in words if stem(w) not in vocabulary)
    return Evidence(
        best_relevance=max(relevances, default=0.0),
        mean_relevance=sum(top) / len(top) if top else 0.0,
        coverage=1.0 - len(missing) / len(words) if words else 1.0,
        missing=missing,
        unknown_names=tuple(unknown),
    )


@dataclass(frozen=True)
class AnswerabilityModel:
    """A fitted decision: standardised features, weights, the probability threshold, and what
    typical answerable questions score (to say which feature fell short)."""

    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    answerable_low: dict[str, float]  # per feature (all of FEATURES): answerable cases' 10th pct
    fitted_on: str = ""  # sha256 of the rows it was fitted on
    notes: str = ""

    def probability(self, evidence: Evidence) -> float:
        """The probability that the passages answer the question."""
        z = self.bias
        for x, mean, scale, w in zip(
            evidence.values(self.features), self.means, self.scales, self.weights, strict=True
        ):
            z += w * (x - mean) / scale
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def to_json(self) -> str:
        """The model as the JSON file it ships in."""
        return json.dumps(asdict(self), indent=2) + "\n"


@cache
def load_model(path: Path | None = None) -> AnswerabilityModel:
    """The shipped model (or one at `path`), read once."""
    if path is None:
        text = files("freshkb.serving").joinpath(MODEL_FILE).read_text("utf-8")
    else:
        text = path.read_text("utf-8")
    data = json.loads(text)
    for key in ("features", "means", "scales", "weights"):
        data[key] = tuple(data[key])
    return AnswerabilityModel(**data)


@dataclass(frozen=True)
class Judgement:
    """The decision on one question, with its evidence and the features that fell short."""

    evidence: Evidence
    probability: float
    threshold: float
    answerable: bool
    off_topic: bool
    shortfalls: tuple[str, ...] = field(default_factory=tuple)

    def reason(self) -> str:
        """Why the question was declined, in words: the probability and what fell short."""
        shortfalls = "; ".join(self.shortfalls)
        if self.threshold <= 0.0:  # the model is off: the floor or the key-word rule declined
            return shortfalls
        why = f"answerability {self.probability:.2f}, bar {self.threshold:.2f}"
        return why + (f" ({shortfalls})" if shortfalls else "")


def judge(
    question: str,
    passages: Sequence[tuple[str, float | None]],
    min_relevance: float,
    model: AnswerabilityModel,
    threshold: float | None = None,
    unknown: Sequence[str] = (),
) -> Judgement:
    """Whether the passages answer the question: relevance over the floor, the model's
    probability over its threshold (or `threshold`), a key word of it in some passage, and no
    name of it (`unknown`) that the sources never mention."""
    evidence = gather_evidence(question, passages, unknown)
    return judge_evidence(evidence, min_relevance, model, threshold)


def judge_evidence(
    evidence: Evidence,
    min_relevance: float,
    model: AnswerabilityModel,
    threshold: float | None = None,
) -> Judgement:
    """`judge` on evidence already gathered."""
    probability = model.probability(evidence)
    bar = model.threshold if threshold is None else threshold
    # Refused only when plainly elsewhere: passages far from it, or sharing none of its key
    # words while under the floor. Passages near it in meaning but without its words may be a
    # paraphrase the knowledge base does cover: a human looks (escalated), not a refusal.
    off_topic = evidence.best_relevance < OFF_TOPIC_SHARE * min_relevance or (
        _nothing_in_common(evidence) and evidence.best_relevance < min_relevance
    )
    return Judgement(
        evidence=evidence,
        probability=probability,
        threshold=bar,
        answerable=probability >= bar
        and evidence.best_relevance >= min_relevance
        and not _nothing_in_common(evidence)
        and not evidence.unknown_names,
        off_topic=off_topic,
        shortfalls=_shortfalls(evidence, model, min_relevance),
    )


def _nothing_in_common(evidence: Evidence) -> bool:
    """True when no key word of the question appears in any passage: hybrid search brings up
    passages holding the question's words when the knowledge base has them, so these cannot
    answer it, however close their vectors."""
    return evidence.coverage == 0.0 and bool(evidence.missing)


def judge_hits(
    question: str, hits: Sequence[SearchHit], settings: Settings, unknown: Sequence[str] = ()
) -> Judgement:
    """`judge` on retrieved hits (each passage's title with its text), with the settings' floor
    and threshold and the shipped model."""
    passages = [(f"{hit.title}\n{hit.text}", hit.relevance) for hit in hits]
    threshold = settings.answer_min_answerability or 0.0  # None: the model declines nothing
    floor = settings.answer_min_relevance
    return judge(question, passages, floor, load_model(), threshold, unknown)


@dataclass(frozen=True)
class Decline:
    """How the service declines a question it cannot answer, and the reason it gives."""

    mode: str  # refused | escalated
    reason: str


def decline(judgement: Judgement, sources_left_out: bool, nothing_found: bool) -> Decline | None:
    """None when the question is answerable; else refused (off-topic) or escalated (in the
    domain, or sources were left out), with why (see the module docstring)."""
    if judgement.answerable and not nothing_found:
        return None
    if nothing_found and sources_left_out:
        why = "no fresh source holds anything relevant (stale sources were left out)"
    else:
        why = judgement.reason()
    if judgement.off_topic and not sources_left_out:
        return Decline("refused", f"outside the knowledge base: {why}")
    return Decline("escalated", f"not answerable from the knowledge base: {why}")


def _shortfalls(
    evidence: Evidence, model: AnswerabilityModel, min_relevance: float
) -> tuple[str, ...]:
    """The features under what nine in ten answerable questions reach (the best relevance
    under the floor, against the floor), in words."""
    bars = dict(model.answerable_low)
    if evidence.best_relevance < min_relevance:
        bars["best_relevance"] = min_relevance
    found = []
    if _nothing_in_common(evidence):
        found.append(f"no passage holds any of its key words ({', '.join(evidence.missing)})")
    if evidence.unknown_names:
        found.append(f"no fresh source mentions {', '.join(evidence.unknown_names)}")
    for name in FEATURES:
        value, low = getattr(evidence, name), bars.get(name)
        if low is None or value >= low:
            continue
        if name == "coverage":
            if not _nothing_in_common(evidence):  # else said above
                missing = ", ".join(evidence.missing)
                found.append(f"{_LABELS[name]} {value:.0%} < {low:.0%}, missing: {missing}")
        else:
            found.append(f"{_LABELS[name]} {value:.2f} < {low:.2f}")
    return tuple(found)


def fit_model(
    rows: Sequence[tuple[Evidence, bool]],
    features: Sequence[str] = FEATURES,
    max_false_declines: float = 0.05,
    notes: str = "",
) -> AnswerabilityModel:
    """A logistic regression (L2, classes weighted equally) over `rows` (evidence, answerable),
    with the highest threshold that declines at most `max_false_declines` of the answerable."""
    import numpy as np

    x = np.array([e.values(features) for e, _ in rows], dtype=float)
    y = np.array([1.0 if ok else 0.0 for _, ok in rows])
    means, scales = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - means) / scales
    weight = np.where(y == 1, 0.5 / max(1.0, y.sum()), 0.5 / max(1.0, (1 - y).sum()))
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(2000):  # gradient descent: a handful of features, a few hundred rows
        p = 1 / (1 + np.exp(-(z @ w + b)))
        w -= 0.5 * (z.T @ (weight * (p - y)) + 0.01 * w)
        b -= 0.5 * float(np.sum(weight * (p - y)))
    answerable = np.sort(1 / (1 + np.exp(-(z[y == 1] @ w + b))))
    allowed = math.floor(max_false_declines * len(answerable))
    threshold = float(answerable[allowed]) if len(answerable) else 0.5
    every = np.array([e.values(FEATURES) for e, ok in rows if ok], dtype=float)
    low = {name: float(np.quantile(every[:, i], 0.1)) for i, name in enumerate(FEATURES)}
    digest = hashlib.sha256(json.dumps([(asdict(e), ok) for e, ok in rows]).encode()).hexdigest()
    return AnswerabilityModel(
        features=tuple(features),
        means=tuple(round(float(v), 6) for v in means),
        scales=tuple(round(float(v), 6) for v in scales),
        weights=tuple(round(float(v), 6) for v in w),
        bias=round(b, 6),
        threshold=round(threshold - 1e-6, 6),
        answerable_low={k: round(v, 4) for k, v in low.items()},
        fitted_on=digest,
        notes=notes,
    )
