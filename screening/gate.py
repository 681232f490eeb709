"""The document screen's first pass: a table look-up that spares the detector most clean text.

The document detector runs the bundled MiniLM over every sentence of every chunk, about as many
tokens as the embed stage embeds (issue 13). Most of those sentences are ordinary policy text
that no detector would flag. The gate scores a passage by the mean of MiniLM's input word-piece
vectors (the model's first table, no transformer layer: microseconds a passage), through a
logistic regression fitted on the same document exemplars as the detector. Only passages the
gate passes, or that a rule matches, go to the detector; the rest count as clean.

Its threshold needs no evaluation data: it is the lowest attack probability that any attack
exemplar got when held out of the fit (5-fold cross-validation), so an instruction worded unlike
every exemplar the gate has learnt from still reaches the detector. `bench/screen_gate.py`
measures what it spares and what it would lose: on the benefits PDFs it passed 59.6% of the
passages and lost none of the dev split's flagged attacks (A or B).

The fitted gate ships in data/fitted/document-gate.npz (`python -m freshkb.screening.gate`),
keyed by the exemplars, the fit and the model; a stale file is fitted again in under a second
(and logged), never silently used. Without the bundled model package there is no table, and no
gate: every passage goes to the detector.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import zipfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from freshkb.screening.detector import fit_logistic
from freshkb.screening.exemplars import document_exemplars, exemplars_digest

log = logging.getLogger(__name__)

GATE_FILE = "data/fitted/document-gate.npz"
# Bump when the gate's features, fit or threshold rule change.
GATE_VERSION = 1
# A strong L2 penalty: the word-vector mean separates the exemplars perfectly in-sample, and a
# weak penalty gives held-out attacks near-zero probabilities (the floor then passes nearly all).
GATE_PENALTY = 10.0
GATE_FOLDS = 5
_TABLE = "embeddings.word_embeddings.weight"


@dataclass(frozen=True, eq=False)
class GateParameters:
    """A fitted gate: the standardisation, the regression (bias last) and the threshold."""

    means: np.ndarray
    scales: np.ndarray
    weights: np.ndarray
    threshold: float


def gate_key(model_id: str) -> str:
    """sha256 of what the gate depends on: the document exemplars, the fit and the model."""
    parts = (exemplars_digest(), GATE_VERSION, GATE_PENALTY, GATE_FOLDS, model_id)
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()


@dataclass(eq=False)
class WordTable:
    """The bundled model's word-piece vectors and tokenizer, read on first use."""

    folder: Path
    _loaded: tuple[np.ndarray, Any] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _load(self) -> tuple[np.ndarray, Any]:
        with self._lock:
            if self._loaded is None:
                from safetensors import safe_open
                from tokenizers import Tokenizer

                with safe_open(str(self.folder / "model.safetensors"), "numpy") as weights:
                    table = weights.get_tensor(_TABLE).astype(np.float32)
                tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                self._loaded = (table, tokenizer)
            return self._loaded

    def vectors(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text: the mean of its word-piece vectors (zeros when empty)."""
        table, tokenizer = self._load()
        out = np.zeros((len(texts), table.shape[1]), dtype=np.float64)
        for row, encoding in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
            if encoding.ids:
                out[row] = table[encoding.ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def probabilities(parameters: GateParameters, vectors: np.ndarray) -> np.ndarray:
    """Attack probabilities of word-vector means under fitted parameters."""
    z = (vectors - parameters.means) / parameters.scales
    logits = z @ parameters.weights[:-1] + parameters.weights[-1]
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


def _fit(vectors: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> GateParameters:
    means, scales = vectors.mean(axis=0), vectors.std(axis=0) + 1e-9
    weights = fit_logistic((vectors - means) / scales, labels, GATE_PENALTY)
    return GateParameters(means, scales, weights, threshold)


def fit_gate(table: WordTable) -> GateParameters:
    """Fit on the document exemplars; the threshold is the lowest probability a held-out attack
    exemplar gets over GATE_FOLDS folds (a fixed shuffle, so the fit is deterministic)."""
    exemplars = document_exemplars()
    vectors = table.vectors([*exemplars.attacks, *exemplars.benign])
    labels = np.r_[np.ones(len(exemplars.attacks)), np.zeros(len(exemplars.benign))]
    order = np.random.default_rng(0).permutation(len(labels))
    held_out = np.zeros(len(labels))
    for fold in np.array_split(order, GATE_FOLDS):
        train = np.setdiff1d(order, fold)
        held_out[fold] = probabilities(_fit(vectors[train], labels[train]), vectors[fold])
    return _fit(vectors, labels, float(held_out[labels == 1].min()))


class PassageGate:
    """Which passages are worth the detector's time."""

    def __init__(self, table: WordTable, parameters: GateParameters, key: str):
        self.table = table
        self.parameters = parameters
        self.key = key

    def passes(self, texts: list[str]) -> np.ndarray:
        """True for each text the detector should judge."""
        if not texts:
            return np.zeros(0, dtype=bool)
        scores = probabilities(self.parameters, self.table.vectors(texts))
        return scores >= self.parameters.threshold


def load_parameters(key: str) -> GateParameters | None:
    """The shipped gate, or None when missing or fitted under another key."""
    try:
        raw = files("freshkb.screening").joinpath(GATE_FILE).read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None
            return GateParameters(
                means=np.asarray(saved["means"], dtype=np.float64),
                scales=np.asarray(saved["scales"], dtype=np.float64),
                weights=np.asarray(saved["weights"], dtype=np.float64),
                threshold=float(saved["threshold"]),
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def load_gate() -> PassageGate | None:
    """The gate over the bundled model's word table, or None without the model package."""
    from freshkb.embeddings.embedder import BUNDLED_MODEL_ID, resolve_model

    folder = Path(resolve_model("all-MiniLM-L6-v2")[0])
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        log.warning("no bundled model files at %s: the screen runs without its gate", folder)
        return None
    table = WordTable(folder)
    key = gate_key(BUNDLED_MODEL_ID)
    parameters = load_parameters(key)
    if parameters is None:
        log.warning(
            "screening/%s is stale: fitting the gate (under a second); run "
            "`python -m freshkb.screening.gate` to ship it",
            GATE_FILE,
        )
        parameters = fit_gate(table)
    return PassageGate(table, parameters, key)


def main() -> None:
    """Fit the gate and write it into the package data."""
    from freshkb.embeddings.embedder import BUNDLED_MODEL_ID, resolve_model

    table = WordTable(Path(resolve_model("all-MiniLM-L6-v2")[0]))
    parameters = fit_gate(table)
    target = Path(__file__).resolve().parent / GATE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as file:
        np.savez_compressed(
            file,
            key=np.asarray(gate_key(BUNDLED_MODEL_ID)),
            means=parameters.means,
            scales=parameters.scales,
            weights=parameters.weights,
            threshold=np.asarray(parameters.threshold),
        )
    print(f"wrote {target} (threshold {parameters.threshold:.4g})")


if __name__ == "__main__":
    main()
