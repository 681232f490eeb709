"""Drift: what people ask and how the service answers, in a recent window against a baseline.

Query topics are clusters of the logged question vectors: KMeans on the baseline (the number
of topics chosen by silhouette), recent questions assigned to the nearest baseline centroid. A
recent question farther from every centroid than 95% of the baseline's own questions lie from
topics fitted without them (cross-fitted, so the threshold is that of unseen questions) is
outside the baseline's topics. Their share is tested against the 5% expected by chance, and
they are grouped: a group as tight as a baseline topic is a new topic, with its retrieval
quality. Beside the topics: volume, answer length, refusal, escalation, degraded, citation and
hallucination-signal rates, retrieval relevance and latency, each baseline against recent,
flagged when it moved beyond a threshold of `DriftThresholds` (drift_windows.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from freshkb.core.errors import DataError
from freshkb.evaluation.drift_windows import (
    DriftThresholds,
    Figure,
    Windows,
    measures,
    proportion,
)
from freshkb.serving.answer_log import LoggedAnswer

# KMeans starts from this many seeds and keeps the best fit: stable topics at a few
# seconds per report; the seeds are fixed, so a report is reproducible.
KMEANS_STARTS = 4


class TooFewAnswers(DataError):
    """A window has too few logged answers to compare."""


@dataclass(frozen=True)
class Topic:
    """A baseline topic: its label and its share of each window."""

    topic: int
    label: str
    baseline_count: int
    recent_count: int
    baseline_share: float
    recent_share: float
    flagged: bool


@dataclass(frozen=True)
class NewTopic:
    """Recent questions far from every baseline topic, grouped."""

    label: str
    count: int
    share: float
    mean_relevance: float | None
    poor_retrieval: bool  # mean best relevance below the baseline's `poor_quantile`
    flagged: bool
    examples: list[str]


@dataclass(frozen=True)
class DriftReport:
    """The comparison of the two windows (JSON via `to_dict`)."""

    baseline_start: datetime
    recent_start: datetime
    end: datetime
    baseline_answers: int
    recent_answers: int
    novelty_threshold: float
    figures: list[Figure]
    topics: list[Topic]
    new_topics: list[NewTopic]
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        row = asdict(self)
        for name in ("baseline_start", "recent_start", "end"):
            row[name] = getattr(self, name).isoformat()
        return row


@dataclass(frozen=True)
class Drift:
    """The report, and each answer's topic for the plots (-1: new; None: no vector)."""

    report: DriftReport
    windows: Windows
    baseline_topics: list[int | None]
    recent_topics: list[int | None]


def _vectors(entries: list[LoggedAnswer]) -> tuple[np.ndarray, list[int]]:
    """The question vectors as rows, and which entries they belong to."""
    rows = [i for i, entry in enumerate(entries) if entry.question_vector is not None]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32), rows
    matrix = np.stack([np.asarray(entries[i].question_vector, dtype=np.float32) for i in rows])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms), rows


def _check_sizes(
    windows: Windows, baseline_rows: int, recent_rows: int, th: DriftThresholds
) -> None:
    for name, start, end, rows, least, option in (
        (
            "baseline",
            windows.baseline_start,
            windows.recent_start,
            baseline_rows,
            th.min_baseline,
            "--baseline",
        ),
        ("recent", windows.recent_start, windows.end, recent_rows, th.min_recent, "--recent"),
    ):
        if rows < least:
            raise TooFewAnswers(
                f"the {name} window {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC has "
                f"{rows} logged questions with vectors; drift needs at least {least}: "
                f"widen {option}, or wait for more answers"
            )


@dataclass(frozen=True)
class TopicModel:
    """The baseline's topics: KMeans centroids, the distance beyond which a question lies
    outside them, and how far apart two questions of one topic lie on average."""

    kmeans: Any
    novelty_threshold: float
    topic_spread: float


def _topic_count(vectors: np.ndarray, distinct: int, th: DriftThresholds, seed: int) -> int:
    """The number of topics with the best silhouette, each with `questions_per_topic`
    distinct questions at least (a thinner centroid says little)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    best, best_score = 1, -1.0
    for k in range(2, min(th.max_topics, distinct // th.questions_per_topic) + 1):
        model = KMeans(n_clusters=k, n_init=KMEANS_STARTS, random_state=seed)
        labels = model.fit_predict(vectors)
        score = float(silhouette_score(vectors, labels, sample_size=2000, random_state=seed))
        if score > best_score:
            best, best_score = k, score
    return best


def _novelty_threshold(
    vectors: np.ndarray, hashes: list[str], k: int, th: DriftThresholds, seed: int
) -> float:
    """The `novelty_quantile` of baseline questions' distances to the nearest centroid of
    topics fitted without them (5-fold, a question's repeats kept in one fold): the spread
    of questions the topics have not seen, which is what a recent question is."""
    from sklearn.cluster import KMeans
    from sklearn.model_selection import GroupKFold

    folds = min(5, len(set(hashes)))
    if folds < 2:  # one question asked over and over: nothing unseen to measure
        model = KMeans(n_clusters=k, n_init=KMEANS_STARTS, random_state=seed).fit(vectors)
        return float(_distances(vectors, model.cluster_centers_).min(axis=1).max())
    held_out: list[np.ndarray] = []
    for fitted, unseen in GroupKFold(n_splits=folds).split(vectors, groups=hashes):
        model = KMeans(n_clusters=k, n_init=KMEANS_STARTS, random_state=seed).fit(vectors[fitted])
        held_out.append(_distances(vectors[unseen], model.cluster_centers_).min(axis=1))
    return float(np.quantile(np.concatenate(held_out), th.novelty_quantile))


def _topic_spread(vectors: np.ndarray, hashes: list[str], labels: np.ndarray) -> float:
    """The mean distance between two distinct questions of the same baseline topic."""
    distinct = sorted({h: i for i, h in enumerate(hashes)}.values())
    pairs: list[np.ndarray] = []
    for topic in set(labels[distinct].tolist()):
        members = vectors[[i for i in distinct if labels[i] == topic]][:500]
        between = _distances(members, members)
        pairs.append(between[np.triu_indices(len(members), 1)])
    joined = np.concatenate(pairs)
    return float(joined.mean()) if len(joined) else 0.0


def fit_topics(
    vectors: np.ndarray, hashes: list[str], th: DriftThresholds, seed: int = 0
) -> TopicModel:
    """KMeans topics of the baseline's question vectors (rows of unit length), with the
    baseline's own spread: the novelty threshold and the mean distance within a topic."""
    from sklearn.cluster import KMeans

    k = _topic_count(vectors, len(set(hashes)), th, seed)
    kmeans = KMeans(n_clusters=k, n_init=KMEANS_STARTS, random_state=seed).fit(vectors)
    return TopicModel(
        kmeans,
        _novelty_threshold(vectors, hashes, k, th, seed),
        _topic_spread(vectors, hashes, kmeans.labels_),
    )


def _distances(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Euclidean distance of every vector to every centroid."""
    return np.linalg.norm(vectors[:, None, :] - centroids[None, :, :], axis=2)


def compare(windows: Windows, th: DriftThresholds | None = None) -> Drift:
    """The drift of the recent window from the baseline; TooFewAnswers when a window is thin."""
    th = th or DriftThresholds()
    base_vectors, base_rows = _vectors(windows.baseline)
    recent_vectors, recent_rows = _vectors(windows.recent)
    _check_sizes(windows, len(base_rows), len(recent_rows), th)
    model = fit_topics(base_vectors, [windows.baseline[i].question_hash for i in base_rows], th)
    to_centroids = _distances(recent_vectors, model.kmeans.cluster_centers_)
    far = to_centroids.min(axis=1) > model.novelty_threshold
    recent_labels = np.where(far, -1, to_centroids.argmin(axis=1))
    base_topics = _spread(len(windows.baseline), base_rows, model.kmeans.labels_)
    recent_topics = _spread(len(windows.recent), recent_rows, recent_labels)
    vocabulary = Vocabulary.of([e.question for e in windows.baseline + windows.recent])
    k = model.kmeans.n_clusters
    topics = _topics(windows, base_topics, recent_topics, k, vocabulary, th)
    far_rows = [windows.recent[recent_rows[i]] for i in np.flatnonzero(far)]
    new_topics = _new_topics(
        windows, far_rows, recent_vectors[far], model.topic_spread, vocabulary, th
    )
    figures = [_far_figure(int(far.sum()), len(recent_rows), th), *measures(windows, th)]
    flags = [f.name for f in figures if f.flagged]
    flags += [f"topic: {t.label}" for t in topics if t.flagged]
    flags += [
        f"new topic{' with poor retrieval' if t.poor_retrieval else ''}: {t.label}"
        for t in new_topics
        if t.flagged
    ]
    report = DriftReport(
        windows.baseline_start,
        windows.recent_start,
        windows.end,
        len(windows.baseline),
        len(windows.recent),
        model.novelty_threshold,
        figures,
        topics,
        new_topics,
        flags,
    )
    return Drift(report, windows, base_topics, recent_topics)


def _far_figure(far: int, total: int, th: DriftThresholds) -> Figure:
    """Recent questions outside every baseline topic, against the share expected of the
    baseline's own unseen questions (1 - novelty_quantile): flagged when a binomial test
    says so many are unlikely by chance."""
    from scipy.stats import binom

    expected = 1 - th.novelty_quantile
    unlikely = float(binom.sf(far - 1, total, expected)) < th.novelty_p
    rule = f"more than the {expected:.0%} expected, binomial p < {th.novelty_p}"
    return Figure("questions outside the baseline topics", expected, far / total, unlikely, rule)


def _spread(size: int, rows: list[int], labels: np.ndarray) -> list[int | None]:
    """Per entry: its topic, or None when it has no vector."""
    topics: list[int | None] = [None] * size
    for row, label in zip(rows, labels, strict=True):
        topics[row] = int(label)
    return topics


_WORD = re.compile(r"[a-z][a-z'-]{2,}")


def _words(question: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {w for w in _WORD.findall(question.lower()) if w not in ENGLISH_STOP_WORDS}


@dataclass(frozen=True)
class Vocabulary:
    """How many logged questions (of both windows) use each word, to label topics by the
    words that set them apart: "does" or "order" in every topic names none of them."""

    questions: int
    frequency: Counter[str]

    @classmethod
    def of(cls, questions: list[str | None]) -> Vocabulary:
        """The vocabulary of the questions whose text the log kept."""
        kept = [question for question in questions if question]
        return cls(len(kept), Counter(word for question in kept for word in _words(question)))

    def label(self, questions: list[str | None], fallback: str) -> str:
        """A topic's three words of highest frequency x rarity (class TF-IDF, as BERTopic
        labels topics); `fallback` when the log kept no question's text."""
        counts = Counter(word for question in questions if question for word in _words(question))
        score = {w: n * math.log(1 + self.questions / self.frequency[w]) for w, n in counts.items()}
        words = sorted(score, key=lambda word: (-score[word], word))[:3]
        return " / ".join(words) if words else fallback


def _topics(
    windows: Windows,
    base_topics: list[int | None],
    recent_topics: list[int | None],
    count: int,
    vocabulary: Vocabulary,
    th: DriftThresholds,
) -> list[Topic]:
    base_total = sum(t is not None for t in base_topics)
    recent_total = sum(t is not None for t in recent_topics)
    topics = []
    for topic in range(count):
        questions = [
            e.question for e, t in zip(windows.baseline, base_topics, strict=True) if t == topic
        ]
        in_recent = sum(t == topic for t in recent_topics)
        moved = proportion(
            "topic", (len(questions), base_total), (in_recent, recent_total), th, th.topic_shift
        )
        topics.append(
            Topic(
                topic,
                vocabulary.label(questions, f"topic {topic + 1}"),
                len(questions),
                in_recent,
                len(questions) / base_total,
                in_recent / recent_total,
                moved.flagged,
            )
        )
    return topics


def _new_topics(
    windows: Windows,
    far: list[LoggedAnswer],
    vectors: np.ndarray,
    spread: float,
    vocabulary: Vocabulary,
    th: DriftThresholds,
) -> list[NewTopic]:
    """Recent questions outside every baseline topic, grouped by average-linkage clustering
    at the baseline's mean distance within a topic: a group as tight as a baseline topic is
    a new topic, flagged when it holds `new_min` questions and `new_share` of the window."""
    if not far:
        return []
    groups = np.zeros(len(far), dtype=int)
    if len(far) > 1:
        from sklearn.cluster import AgglomerativeClustering

        clustering = AgglomerativeClustering(
            n_clusters=None, distance_threshold=spread, linkage="average"
        )
        groups = clustering.fit_predict(vectors)
    relevances = [e.best_relevance for e in windows.baseline if e.best_relevance is not None]
    floor = float(np.quantile(relevances, th.poor_quantile)) if relevances else None
    found = []
    for group in sorted(set(groups.tolist())):
        entries = [entry for entry, g in zip(far, groups, strict=True) if g == group]
        relevance = [e.best_relevance for e in entries if e.best_relevance is not None]
        mean = float(np.mean(relevance)) if relevance else None
        share = len(entries) / len(windows.recent)
        found.append(
            NewTopic(
                vocabulary.label([e.question for e in entries], f"new topic {group + 1}"),
                len(entries),
                share,
                mean,
                mean is not None and floor is not None and mean < floor,
                len(entries) >= th.new_min and share >= th.new_share,
                [e.question for e in entries if e.question][:3],
            )
        )
    return sorted(found, key=lambda topic: -topic.count)
