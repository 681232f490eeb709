"""The document screen's first pass: a table look-up that spares the detector most clean text.

The document detector runs the bundled MiniLM over every sentence of every chunk, about as many
tokens as the embed stage embeds (issue 13), and most of those sentences are ordinary policy
text. The prefilter scores text by the mean of MiniLM's input word-piece vectors (the model's
first table, no transformer layer: microseconds a passage), through a logistic regression fitted
on the same document exemplars as the detector. Only passages it passes, or that a rule matches,
go to the detector; the rest count as clean.

A passage is scored in windows of WINDOW_WORDS words as well as whole, and passes when any of
them does: an instruction written into a long ordinary sentence is not averaged away by the
words around it (the exemplars it learnt from are short sentences, about ten words).

Its threshold is a heuristic floor set without evaluation data: the lowest probability any
attack exemplar gets from a model fitted without it (5-fold cross-validation), applied to the
model fitted on all of them. It is a measured trade, not a guarantee: text far from every
attack exemplar can score under it, and would have needed the detector to be caught.
`bench/screen_prefilter.py` measures what it spares and what it loses: on the benefits PDFs, how
many passages reach the detector, and of the dev split's attacks, hidden on their own line or
blended into a sentence of an e-mail, how many are still flagged.

The fitted prefilter ships in data/fitted/document-prefilter.npz
(`python -m freshkb.screening.prefilter`), keyed by the exemplars, the fit and the model; a
stale file is fitted again once per process (under a second, logged), never silently used.
Without the bundled model's files there is no table and no prefilter: every passage goes to
the detector.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from freshkb.core.text import word_windows
from freshkb.screening.detector import fit_logistic
from freshkb.screening.exemplars import document_exemplars, exemplars_digest
from freshkb.screening.fitted import key_of, package_file, read_keyed, ship_arrays

log = logging.getLogger(__name__)

PREFILTER_FILE = "data/fitted/document-prefilter.npz"
# Bump when the features, the fit or the threshold rule change.
PREFILTER_VERSION = 2
# A strong L2 penalty: the word-vector mean separates the exemplars perfectly in-sample. The
# share of text passed hardly moves between 3 and 100 (bench/screen_prefilter.py).
PENALTY = 10.0
FOLDS = 5
# Windows as long as a typical attack exemplar; longer passages are also scored in them.
WINDOW_WORDS = 10
WINDOW_STRIDE = 5
_TABLE = "embeddings.word_embeddings.weight"
_PARTS = ("means", "scales", "weights", "threshold")


@dataclass(frozen=True, eq=False)
class PrefilterParameters:
    """A fitted prefilter: the standardisation, the regression (bias last), the threshold."""

    means: np.ndarray
    scales: np.ndarray
    weights: np.ndarray
    threshold: float


def prefilter_key(model_id: str) -> str:
    """sha256 of what the prefilter depends on: the document exemplars, the fit, the model."""
    parts = (exemplars_digest(), PREFILTER_VERSION, PENALTY, FOLDS, WINDOW_WORDS, WINDOW_STRIDE)
    return key_of(*parts, model_id)


class WordTable:
    """The bundled model's word-piece vectors and tokenizer, read on first use."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._loaded: tuple[np.ndarray, Any] | None = None
        self._lock = threading.Lock()

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


def probabilities(parameters: PrefilterParameters, vectors: np.ndarray) -> np.ndarray:
    """Attack probabilities of word-vector means under fitted parameters."""
    z = (vectors - parameters.means) / parameters.scales
    logits = z @ parameters.weights[:-1] + parameters.weights[-1]
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


def windows(text: str) -> list[str]:
    """The text whole, and in overlapping windows of WINDOW_WORDS words when longer."""
    pieces = word_windows(text.split(), WINDOW_WORDS, WINDOW_STRIDE)
    return [text, *pieces] if len(pieces) > 1 else [text]


def _fit(vectors: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> PrefilterParameters:
    means, scales = vectors.mean(axis=0), vectors.std(axis=0) + 1e-9
    weights = fit_logistic((vectors - means) / scales, labels, PENALTY)
    return PrefilterParameters(means, scales, weights, threshold)


def fit_prefilter(table: WordTable) -> PrefilterParameters:
    """Fit on the document exemplars; the threshold is the lowest probability an attack
    exemplar gets from the fold model fitted without it (a fixed shuffle: deterministic)."""
    exemplars = document_exemplars()
    vectors = table.vectors([*exemplars.attacks, *exemplars.benign])
    labels = np.r_[np.ones(len(exemplars.attacks)), np.zeros(len(exemplars.benign))]
    order = np.random.default_rng(0).permutation(len(labels))
    held_out = np.zeros(len(labels))
    for fold in np.array_split(order, FOLDS):
        train = np.setdiff1d(order, fold)
        held_out[fold] = probabilities(_fit(vectors[train], labels[train]), vectors[fold])
    return _fit(vectors, labels, float(held_out[labels == 1].min()))


class Prefilter:
    """Which passages are worth the detector's time."""

    def __init__(self, table: WordTable, parameters: PrefilterParameters, key: str):
        self.table = table
        self.parameters = parameters
        self.key = key

    def scores(self, texts: list[str]) -> np.ndarray:
        """Per text, the highest probability of it whole or of any of its windows."""
        pieces = [windows(text) for text in texts]
        flat = self.table.vectors([piece for group in pieces for piece in group])
        scored = probabilities(self.parameters, flat)
        out, start = np.zeros(len(texts)), 0
        for row, group in enumerate(pieces):
            out[row] = scored[start : start + len(group)].max()
            start += len(group)
        return out

    def passes(self, texts: list[str]) -> np.ndarray:
        """True for each text the detector should judge."""
        if not texts:
            return np.zeros(0, dtype=bool)
        return self.scores(texts) >= self.parameters.threshold


def load_parameters(key: str) -> PrefilterParameters | None:
    """The shipped prefilter, or None when missing, unreadable or fitted under another key."""
    source = package_file(PREFILTER_FILE)
    arrays = None if source is None else read_keyed(source, key, _PARTS)
    if arrays is None:
        return None
    threshold = float(arrays.pop("threshold"))
    return PrefilterParameters(**arrays, threshold=threshold)


def _bundled_folder() -> Path:
    from freshkb.embeddings.embedder import resolve_model

    return Path(resolve_model("all-MiniLM-L6-v2")[0])


@cache
def load_prefilter() -> Prefilter | None:
    """The prefilter over the bundled model's word table (one per process), or None without
    the model's files."""
    from freshkb.embeddings.embedder import BUNDLED_MODEL_ID

    folder = _bundled_folder()
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        log.warning("no bundled model files at %s: the screen runs without its prefilter", folder)
        return None
    table = WordTable(folder)
    key = prefilter_key(BUNDLED_MODEL_ID)
    parameters = load_parameters(key)
    if parameters is None:
        log.warning(
            "screening/%s is missing or was fitted on other exemplars or settings: fitting the "
            "prefilter (under a second); run `python -m freshkb.screening.prefilter` to ship it",
            PREFILTER_FILE,
        )
        parameters = fit_prefilter(table)
    return Prefilter(table, parameters, key)


def main() -> None:
    """Fit the prefilter and write it into the package data."""
    from freshkb.embeddings.embedder import BUNDLED_MODEL_ID

    parameters = fit_prefilter(WordTable(_bundled_folder()))
    target = Path(__file__).resolve().parent / PREFILTER_FILE
    arrays = {part: np.asarray(getattr(parameters, part)) for part in _PARTS}
    ship_arrays(target, prefilter_key(BUNDLED_MODEL_ID), arrays)
    print(f"wrote {target} (threshold {parameters.threshold:.4g})")


if __name__ == "__main__":
    main()
