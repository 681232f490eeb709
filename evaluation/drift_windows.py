"""The two windows a drift comparison reads from the answer log, the thresholds that say when
a figure moved, and the per-answer measures compared between the windows: volume, answer
length, refusal, escalation, degraded, citation and hallucination-signal rates, retrieval
relevance and latency."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from freshkb.serving.answer_log import AnswerLog, LoggedAnswer


@dataclass(frozen=True)
class DriftThresholds:
    """When a figure counts as moved. Rates need both the absolute change and a two-proportion
    z test, so a handful of answers in a small window does not raise a flag by chance."""

    min_baseline: int = 20  # questions with vectors the baseline needs to form topics
    min_recent: int = 5
    max_topics: int = 8
    questions_per_topic: int = 10  # distinct baseline questions a topic needs, at least
    # A question farther from every centroid than this quantile of held-out baseline
    # questions' distances (cross-fitted) lies outside the baseline's topics.
    novelty_quantile: float = 0.95
    novelty_p: float = 0.01  # far questions flagged when a binomial test gives less than this
    new_share: float = 0.10  # a group of far questions is a new topic with this share ...
    new_min: int = 3  # ... and at least this many questions
    topic_shift: float = 0.10  # a topic's share of questions, absolute change (and z test)
    rate_shift: float = 0.05  # a rate's absolute change, when also significant at `z`
    z: float = 1.96
    relative_shift: float = 0.25  # answer length, latency, relevance, volume: relative change
    poor_quantile: float = 0.25  # a new topic retrieves poorly below this baseline quantile


@dataclass(frozen=True)
class Windows:
    """The answers of the baseline window and of the recent one that follows it."""

    baseline_start: datetime
    recent_start: datetime
    end: datetime
    baseline: list[LoggedAnswer]
    recent: list[LoggedAnswer]


def read_windows(log: AnswerLog, baseline: timedelta, recent: timedelta, end: datetime) -> Windows:
    """The recent window ends at `end`; the baseline ends where the recent one starts."""
    recent_start = end - recent
    baseline_start = recent_start - baseline
    return Windows(
        baseline_start,
        recent_start,
        end,
        list(log.between(baseline_start, recent_start)),
        list(log.between(recent_start, end)),
    )


@dataclass(frozen=True)
class Figure:
    """One measure, baseline against recent, and whether it moved beyond its threshold."""

    name: str
    baseline: float | None
    recent: float | None
    flagged: bool
    rule: str  # the threshold, in words
    unit: str = "share"  # share (of answers), or the level's unit: ms, chars, per day, score


def _share(entries: list[LoggedAnswer], test: Any) -> tuple[int, int]:
    return sum(1 for e in entries if test(e)), len(entries)


def proportion(
    name: str,
    base: tuple[int, int],
    recent: tuple[int, int],
    th: DriftThresholds,
    shift: float | None = None,
) -> Figure:
    """A rate (hits, total), flagged when it moved by `shift` (default `rate_shift`) and a
    two-proportion z test agrees."""
    (x1, n1), (x2, n2) = base, recent
    p1, p2 = (x1 / n1 if n1 else None), (x2 / n2 if n2 else None)
    shift = th.rate_shift if shift is None else shift
    moved = False
    if p1 is not None and p2 is not None and abs(p2 - p1) >= shift:
        pooled = (x1 + x2) / (n1 + n2)
        error = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        moved = error == 0 or abs(p2 - p1) / error >= th.z
    rule = f"moved {shift:.0%} or more, significant at z {th.z}"
    return Figure(name, p1, p2, moved, rule)


def _relative(
    name: str, unit: str, base: float | None, recent: float | None, th: DriftThresholds
) -> Figure:
    """A level, flagged when it moved by `relative_shift` of the baseline either way."""
    moved = bool(
        base and recent is not None and abs(recent - base) / abs(base) >= th.relative_shift
    )
    return Figure(name, base, recent, moved, f"moved {th.relative_shift:.0%} or more", unit)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def measures(windows: Windows, th: DriftThresholds) -> list[Figure]:
    """Every per-answer measure, baseline against recent."""
    base, recent = windows.baseline, windows.recent
    days = (windows.recent_start - windows.baseline_start) / timedelta(days=1)
    recent_days = (windows.end - windows.recent_start) / timedelta(days=1)
    rates = [
        ("refusal rate", lambda e: e.mode == "refused"),
        ("escalation rate", lambda e: e.mode == "escalated"),
        ("degraded rate", lambda e: e.mode == "degraded"),
        ("citation rate", lambda e: bool(e.citations)),
        ("hallucination signal rate", lambda e: bool(e.signals)),
    ]
    figures = [
        _relative("questions", "per day", len(base) / days, len(recent) / recent_days, th),
        *(proportion(name, _share(base, test), _share(recent, test), th) for name, test in rates),
        _relative(
            "answer length",
            "chars",
            _mean([e.answer_chars for e in base]),
            _mean([e.answer_chars for e in recent]),
            th,
        ),
    ]
    relevance = [
        [e.best_relevance for e in w if e.best_relevance is not None] for w in (base, recent)
    ]
    figures.append(
        _relative("best retrieval relevance", "score", _mean(relevance[0]), _mean(relevance[1]), th)
    )
    for q, name in ((0.5, "latency p50"), (0.95, "latency p95")):
        figures.append(
            _relative(
                name,
                "ms",
                _quantile([e.latency_ms for e in base], q),
                _quantile([e.latency_ms for e in recent], q),
                th,
            )
        )
    return figures
