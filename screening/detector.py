"""The learned half of the screen: logistic regressions over sentence embeddings.

Both are fitted with numpy by Newton steps, so deterministically. The question detector is
trained offline on public prompt-injection sets (screening/train.py) and only its weights and
threshold ship. The document detector is fitted on a few hundred exemplars of document text
(data/exemplars/document_*.jsonl), and a passage must also be nearer its attack exemplars than
its benign ones (the neighbour margin), so that a text far from every exemplar is not called an
attack on extrapolation alone; a detector without exemplars has no such check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from freshkb.embeddings.embedder import Embedder
from freshkb.screening.exemplars import Exemplars

# Bump when the fitting or scoring changes (features, solver, penalty, neighbours): saved
# parameters of another version are then fitted again instead of loaded.
DETECTOR_VERSION = 1
NEIGHBOURS = 3
L2_PENALTY = 0.1
# The document detector's probability threshold, chosen by cross-validating its exemplars.
# Documents are judged sentence by sentence, over many sentences, so a sentence must also be
# closer to the attack exemplars than to the benign ones (a neighbour margin >= 0) to count.
DOCUMENT_THRESHOLD = 0.5


@dataclass(frozen=True, eq=False)
class DetectorParameters:
    """What fitting produces: the regression's weights, its threshold, and the exemplars'
    embeddings for the neighbour margin (no rows: no margin check)."""

    attacks: np.ndarray  # one row per attack exemplar
    benign: np.ndarray  # one row per benign exemplar
    weights: np.ndarray  # one per embedding dimension, then the bias
    threshold: float  # the probability at and above which a text counts as an attack


def fit_logistic(features: np.ndarray, labels: np.ndarray, penalty: float) -> np.ndarray:
    """Class-balanced L2 logistic regression by Newton steps; the last weight is the bias."""
    x = np.hstack([features, np.ones((len(features), 1))])
    positives = labels.sum()
    sample_weight = np.where(labels == 1, 0.5 / positives, 0.5 / (len(labels) - positives))
    sample_weight *= len(labels)
    ridge = np.full(x.shape[1], penalty)
    ridge[-1] = 0.0
    weights = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ weights)))
        gradient = x.T @ (sample_weight * (p - labels)) + ridge * weights
        hessian = (x.T * (sample_weight * p * (1 - p))) @ x + np.diag(ridge)
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(weights)), gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def fit_parameters(
    embedder: Embedder, exemplars: Exemplars, threshold: float
) -> DetectorParameters:
    """Embed the exemplars and fit the regression on them."""
    attacks, benign = exemplars.attacks, exemplars.benign
    vectors = np.asarray(embedder.embed([*attacks, *benign]), dtype=np.float64)
    labels = np.r_[np.ones(len(attacks)), np.zeros(len(benign))]
    return DetectorParameters(
        attacks=vectors[: len(attacks)],
        benign=vectors[len(attacks) :],
        weights=fit_logistic(vectors, labels, L2_PENALTY),
        threshold=threshold,
    )


class ExemplarDetector:
    """Scores texts by how much their embeddings resemble attacks over benign texts."""

    def __init__(self, embedder: Embedder, parameters: DetectorParameters):
        self._embedder = embedder
        self.parameters = parameters

    @property
    def model_id(self) -> str:
        """The embedding model (and precision) whose vectors this detector judges."""
        return self._embedder.model_id

    def score(
        self, texts: Sequence[str], known: Mapping[str, Sequence[float]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per text: the attack probability, and the neighbour margin (attack minus benign).
        Texts in `known` (vectors of this detector's model, made by another step) are not
        embedded again."""
        if not texts:
            return np.zeros(0), np.zeros(0)
        known = known or {}
        todo = [t for t in texts if t not in known]
        fresh = dict(zip(todo, self._embedder.embed(todo), strict=True)) if todo else {}
        vectors = np.asarray([known.get(t, fresh.get(t)) for t in texts], dtype=np.float64)
        return score_vectors(self.parameters, vectors)


def score_vectors(fitted: DetectorParameters, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per embedding: the attack probability, and the neighbour margin (0 without exemplars)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    logits = vectors @ fitted.weights[:-1] + fitted.weights[-1]
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    if not len(fitted.attacks) or not len(fitted.benign):
        return probabilities, np.zeros(len(vectors))
    margin = _top_mean(vectors @ fitted.attacks.T) - _top_mean(vectors @ fitted.benign.T)
    return probabilities, margin


def _top_mean(similarities: np.ndarray) -> np.ndarray:
    return np.sort(similarities, axis=1)[:, -NEIGHBOURS:].mean(axis=1)
