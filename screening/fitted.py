"""Fit once: the detectors' parameters ship in the package, else are saved under the cache
directory, and are loaded at start.

Fitting embeds every exemplar (most of a minute on a CPU). The saved file is named by the
sha256 of what the fit depends on: the exemplar files, the detector's version and the embedding
model, so that a change to any of them fits again instead of loading stale parameters.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from freshkb.embeddings.embedder import Embedder
from freshkb.screening.detector import (
    DETECTOR_VERSION,
    L2_PENALTY,
    NEIGHBOURS,
    DetectorParameters,
    fit_parameters,
)
from freshkb.screening.exemplars import document_exemplars, exemplars_digest, question_exemplars

log = logging.getLogger(__name__)

# The parameters fitted on the bundled detector model, shipped so that no start-up fits (a
# fresh cache directory, a new container): regenerate with `python -m freshkb.screening.fitted`
# whenever an exemplar, the detector or the model changes (a test fails until then).
SHIPPED_FILE = "data/fitted/injection-detectors.npz"


@dataclass(frozen=True, eq=False)
class FittedDetectors:
    """The fitted parameters of the guard's two detectors."""

    questions: DetectorParameters
    documents: DetectorParameters

    def by_name(self) -> dict[str, DetectorParameters]:
        """Each detector's parameters under its name, as saved."""
        return {"questions": self.questions, "documents": self.documents}


def fit_key(model_id: str) -> str:
    """sha256 of everything the fitted parameters depend on."""
    digest = hashlib.sha256()
    for part in (exemplars_digest(), DETECTOR_VERSION, L2_PENALTY, NEIGHBOURS, model_id):
        digest.update(f"{part}\n".encode())
    return digest.hexdigest()


def fitted_path(cache_dir: Path, key: str) -> Path:
    """Where the parameters fitted under `key` are saved."""
    return cache_dir / "screening" / f"injection-detector-{key[:16]}.npz"


def load_or_fit(
    embedder: Embedder, cache_dir: Path | None, use_shipped: bool = False
) -> FittedDetectors:
    """Parameters of both detectors: the shipped ones (with `use_shipped`) or those saved under
    the same key, else fitted and saved.

    Without a cache directory and shipped parameters they are fitted every time.
    """
    key = fit_key(embedder.model_id)
    if use_shipped and (shipped := load_shipped(key)) is not None:
        return shipped
    path = fitted_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and (saved := load_fitted(path, key)) is not None:
        return saved
    log.info("fitting the prompt-injection detectors on %s", embedder.model_id)
    fitted = FittedDetectors(
        questions=fit_parameters(embedder, question_exemplars()),
        documents=fit_parameters(embedder, document_exemplars()),
    )
    if path is not None:
        save_fitted(path, key, fitted)
    return fitted


def load_shipped(key: str) -> FittedDetectors | None:
    """The parameters shipped in the package, or None when fitted under another key."""
    try:
        raw = files("freshkb.screening").joinpath(SHIPPED_FILE).read_bytes()
    except OSError:
        return None
    return load_fitted(io.BytesIO(raw), key)


def load_fitted(path: Path | BinaryIO, key: str) -> FittedDetectors | None:
    """The parameters saved at path, or None when missing, unreadable or under another key."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None
            # float64 whatever was saved: the shipped file keeps the float32 model outputs as
            # float32, which converts back exactly.
            found = {
                name: DetectorParameters(
                    **{
                        part: np.asarray(saved[f"{name}_{part}"], dtype=np.float64)
                        for part in ("attacks", "benign", "weights")
                    }
                )
                for name in ("questions", "documents")
            }
        return FittedDetectors(**found)
    except FileNotFoundError:
        return None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable (%s); fitting the detectors again", path, exc)
        return None


def save_fitted(path: Path, key: str, fitted: FittedDetectors) -> None:
    """Save parameters under key, atomically: a process starting meanwhile never reads half."""
    arrays: dict[str, Any] = {"key": np.asarray(key)}
    for name, parameters in fitted.by_name().items():
        arrays[f"{name}_attacks"] = parameters.attacks
        arrays[f"{name}_benign"] = parameters.benign
        arrays[f"{name}_weights"] = parameters.weights
    # Per-process name, so two processes fitting at once do not write into one file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as file:
            np.savez(file, **arrays)
        partial.replace(path)
    except OSError as exc:
        # A read-only or full cache costs a fit at every start, not the service.
        log.warning("could not save the fitted detectors to %s (%s)", path, exc)
        partial.unlink(missing_ok=True)


def ship_fitted(path: Path, key: str, fitted: FittedDetectors) -> None:
    """Write parameters as the package's shipped file: exemplar rows as float32 (what the model
    gave, so exact), compressed, to keep the package small."""
    arrays: dict[str, Any] = {"key": np.asarray(key)}
    for name, parameters in fitted.by_name().items():
        arrays[f"{name}_attacks"] = parameters.attacks.astype(np.float32)
        arrays[f"{name}_benign"] = parameters.benign.astype(np.float32)
        arrays[f"{name}_weights"] = parameters.weights
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        np.savez_compressed(file, **arrays)


def main() -> None:
    """Fit both detectors on the bundled model and write them into the package data."""
    from freshkb.embeddings.embedder import get_embedder

    embedder = get_embedder("all-MiniLM-L6-v2", "cpu")
    fitted = FittedDetectors(
        questions=fit_parameters(embedder, question_exemplars()),
        documents=fit_parameters(embedder, document_exemplars()),
    )
    target = Path(__file__).resolve().parent / SHIPPED_FILE
    ship_fitted(target, fit_key(embedder.model_id), fitted)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
