"""Fit once, load at start: the detectors' parameters ship in the package.

- The question detector is trained offline on public data (`python -m freshkb.screening.train`,
  screening/train.py) and ships as data/fitted/question-detector.npz (weights, threshold and
  the vectors of its neighbour check), with its provenance beside it; nothing fits it at run
  time (its data is not in the package).
- The document detector is fitted on the document exemplars (most of a minute on a CPU) and
  ships as data/fitted/document-detector.npz (`python -m freshkb.screening.fitted`); another
  embedding model fits it once and saves it under the cache directory.

Each file holds the sha256 of what it was fitted on (its key), so a change to the exemplars,
the training spec, the detector or the model is noticed instead of loading stale parameters.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from freshkb.core.errors import ConfigError
from freshkb.embeddings.embedder import Embedder, base_model_id
from freshkb.screening.detector import (
    DETECTOR_VERSION,
    DOCUMENT_THRESHOLD,
    L2_PENALTY,
    NEIGHBOURS,
    DetectorParameters,
    fit_parameters,
)
from freshkb.screening.exemplars import QUESTION_SETS, document_exemplars, exemplars_digest

log = logging.getLogger(__name__)

QUESTION_FILE = "data/fitted/question-detector.npz"
DOCUMENT_FILE = "data/fitted/document-detector.npz"
TRAINING_SPEC_FILE = "data/training_data.yaml"
# Bump when training or scoring of the question detector changes (features, solver, threshold
# rule): the shipped parameters are then stale until trained again.
QUESTION_DETECTOR_VERSION = 1
_PARTS = ("attacks", "benign", "weights", "threshold")


@dataclass(frozen=True, eq=False)
class FittedDetectors:
    """The fitted parameters of the guard's two detectors."""

    questions: DetectorParameters
    documents: DetectorParameters


def key_of(*parts: object) -> str:
    """sha256 over parts, one per line: the key fitted parameters are saved under."""
    return hashlib.sha256("".join(f"{part}\n" for part in parts).encode()).hexdigest()


def fit_key(model_id: str) -> str:
    """sha256 of everything the document detector's parameters depend on.

    The model counts without its precision (embeddings/embedder.py base_model_id): the same
    parameters judge MiniLM's int8 vectors as well as its fp32 ones (measured with
    `bench/safety_eval.py --backend onnx-int8`), so verdicts and parameters are shared.
    """
    parts = (exemplars_digest(), DETECTOR_VERSION, L2_PENALTY, NEIGHBOURS, DOCUMENT_THRESHOLD)
    return key_of(*parts, base_model_id(model_id))


def question_key(model_id: str) -> str:
    """sha256 of what the question detector must have been trained on: the training spec (the
    wheel's hash, the sets, the threshold rule), the question exemplars of its neighbour
    check, the detector's version and the model."""
    spec = files("freshkb.screening").joinpath(TRAINING_SPEC_FILE).read_bytes()
    digest = hashlib.sha256(spec)
    neighbours = exemplars_digest(QUESTION_SETS)
    model = base_model_id(model_id)  # either precision, as fit_key
    digest.update(f"\n{neighbours}\n{QUESTION_DETECTOR_VERSION}\n{model}\n".encode())
    return digest.hexdigest()


def fitted_path(cache_dir: Path, key: str) -> Path:
    """Where the document detector fitted under `key` is saved in the cache directory."""
    return cache_dir / "screening" / f"document-detector-{key[:16]}.npz"


def load_or_fit(
    embedder: Embedder, cache_dir: Path | None, use_shipped: bool = False
) -> FittedDetectors:
    """The shipped question detector, and the document detector: shipped (with
    `use_shipped`), else saved under the same key, else fitted and saved.

    Without a cache directory and shipped parameters the document detector is fitted every time.
    """
    questions = load_shipped(QUESTION_FILE, question_key(embedder.model_id))
    if questions is None:
        raise ConfigError(
            f"freshkb/screening/{QUESTION_FILE} was not trained for {embedder.model_id} and "
            "the current data/training_data.yaml: run `python -m freshkb.screening.train`"
        )
    key = fit_key(embedder.model_id)
    if use_shipped and (shipped := load_shipped(DOCUMENT_FILE, key)) is not None:
        return FittedDetectors(questions, shipped)
    path = fitted_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and (saved := load_fitted(path, key)) is not None:
        return FittedDetectors(questions, saved)
    log.info("fitting the document injection detector on %s", embedder.model_id)
    documents = fit_parameters(embedder, document_exemplars(), DOCUMENT_THRESHOLD)
    if path is not None:
        save_fitted(path, key, documents)
    return FittedDetectors(questions, documents)


def package_file(name: str) -> BinaryIO | None:
    """A data file shipped in the screening package, or None when it is not there."""
    try:
        return io.BytesIO(files("freshkb.screening").joinpath(name).read_bytes())
    except OSError:
        return None


def load_shipped(name: str, key: str) -> DetectorParameters | None:
    """Parameters shipped in the package file `name`, or None when fitted under another key."""
    source = package_file(name)
    return None if source is None else load_fitted(source, key)


def read_keyed(
    source: Path | BinaryIO, key: str, parts: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """The arrays `parts` saved at source under `key`, as float64; None when missing, under
    another key, or unreadable (logged)."""
    try:
        with np.load(source, allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None
            # float64 whatever was saved: shipped float32 rows convert back exactly.
            return {part: np.asarray(saved[part], dtype=np.float64) for part in parts}
    except FileNotFoundError:
        return None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable (%s); fitting again", getattr(source, "name", source), exc)
        return None


def load_fitted(path: Path | BinaryIO, key: str) -> DetectorParameters | None:
    """The parameters saved at path, or None when missing, unreadable or under another key."""
    arrays = read_keyed(path, key, _PARTS)
    if arrays is None:
        return None
    threshold = float(arrays.pop("threshold"))
    return DetectorParameters(**arrays, threshold=threshold)


def _arrays(parameters: DetectorParameters, exemplar_type: Any) -> dict[str, Any]:
    return {
        "attacks": parameters.attacks.astype(exemplar_type),
        "benign": parameters.benign.astype(exemplar_type),
        "weights": parameters.weights,
        "threshold": np.asarray(parameters.threshold),
    }


def save_fitted(path: Path, key: str, parameters: DetectorParameters) -> None:
    """Save parameters under key, atomically: a process starting meanwhile never reads half."""
    # Per-process name, so two processes fitting at once do not write into one file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as file:
            np.savez(file, key=np.asarray(key), **_arrays(parameters, np.float64))
        partial.replace(path)
    except OSError as exc:
        # A read-only or full cache costs a fit at every start, not the service.
        log.warning("could not save the fitted detector to %s (%s)", path, exc)
        partial.unlink(missing_ok=True)


def ship_arrays(path: Path, key: str, arrays: Mapping[str, Any]) -> None:
    """Write arrays under key as a shipped package file, compressed to keep the package small."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        np.savez_compressed(file, key=np.asarray(key), **arrays)


def ship_fitted(path: Path, key: str, parameters: DetectorParameters) -> None:
    """Write parameters as a shipped package file: exemplar rows as float32 (what the model
    gave, so exact)."""
    ship_arrays(path, key, _arrays(parameters, np.float32))


def main() -> None:
    """Fit the document detector on the bundled model and write it into the package data."""
    from freshkb.embeddings.embedder import get_embedder

    embedder = get_embedder("all-MiniLM-L6-v2", "cpu")
    documents = fit_parameters(embedder, document_exemplars(), DOCUMENT_THRESHOLD)
    target = Path(__file__).resolve().parent / DOCUMENT_FILE
    ship_fitted(target, fit_key(embedder.model_id), documents)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
