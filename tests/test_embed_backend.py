"""The ONNX Runtime backend: exported locally from the bundled weights, vectors as torch's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError
from freshkb.embeddings.embedder import (
    BUNDLED_MODEL_ID,
    SentenceTransformerEmbedder,
    get_embedder,
    resolve_model,
    select_embedder,
)
from freshkb.embeddings.onnx_backend import INT8_SUFFIX, OnnxEmbedder, export_path, exportable

TEXTS = [
    "Returns",
    "Boots may be returned within 60 days if unworn.",
    "How do I file a claim for an out-of-network specialist visit?",
    # Longer than the model window (256 tokens): both backends must truncate alike.
    " ".join(f"Clause {n} of the warranty covers seams, zips and soles." for n in range(60)),
    "Le sac à dos est garanti deux ans contre les défauts de fabrication.",
    "",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export per test session, shared by the tests that need one (see test_screen_cache)."""
    return tmp_path_factory.getbasetemp() / "onnx-cache"


def cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    left, right = np.asarray(a), np.asarray(b)
    return (left * right).sum(axis=1) / (
        np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    )


@pytest.mark.timeout(300)
def test_onnx_vectors_are_unit_length_and_match_torch_text_by_text(onnx_cache: Path):
    torch_vectors = get_embedder("all-MiniLM-L6-v2", "cpu").embed(TEXTS)
    embedder = select_embedder("all-MiniLM-L6-v2", "cpu", 64, "onnx", onnx_cache)
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.model_id == BUNDLED_MODEL_ID  # the same vectors: no index rebuild
    assert (embedder.dimension, embedder.max_tokens) == (384, 256)
    vectors = embedder.embed(TEXTS)
    assert len(vectors) == len(TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # Text by text, so a batch put back in the wrong order fails.
    assert cosines(vectors, torch_vectors).min() >= 0.999
    assert embedder.embed([]) == []


@pytest.mark.timeout(300)
def test_int8_vectors_carry_their_own_model_id_and_stay_close(onnx_cache: Path):
    load_from, model_id = resolve_model("all-MiniLM-L6-v2")
    embedder = OnnxEmbedder(load_from, model_id, onnx_cache, "int8")
    # Another model id, so the store's model-change check rebuilds an index of other vectors.
    assert embedder.model_id == BUNDLED_MODEL_ID + INT8_SUFFIX
    assert export_path(onnx_cache, model_id, load_from, "int8").is_file()
    vectors = embedder.embed(TEXTS)
    torch_vectors = get_embedder("all-MiniLM-L6-v2", "cpu").embed(TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert cosines(vectors, torch_vectors).min() >= 0.97


@pytest.mark.timeout(120)
def test_export_is_made_once_and_reused(onnx_cache: Path):
    load_from, model_id = resolve_model("all-MiniLM-L6-v2")
    path = export_path(onnx_cache, model_id, load_from, "fp32")
    OnnxEmbedder(load_from, model_id, onnx_cache)
    made = path.stat().st_mtime_ns
    OnnxEmbedder(load_from, model_id, onnx_cache)
    assert path.stat().st_mtime_ns == made
    assert not list(path.parent.glob("*.tmp"))  # no partial export left behind
    assert export_path(onnx_cache, "local:another", load_from, "fp32") != path


@pytest.mark.timeout(120)
def test_backend_choice_follows_the_setting_and_the_device(onnx_cache: Path, tmp_path: Path):
    assert isinstance(
        select_embedder("all-MiniLM-L6-v2", "cpu", 64, "auto", onnx_cache), OnnxEmbedder
    )
    assert isinstance(
        select_embedder("all-MiniLM-L6-v2", "cpu", 64, "torch", onnx_cache),
        SentenceTransformerEmbedder,
    )
    # Nowhere to export to: torch, not a failure.
    assert isinstance(
        select_embedder("all-MiniLM-L6-v2", "cpu", 64, "auto", None), SentenceTransformerEmbedder
    )
    with pytest.raises(ConfigError, match="use one of"):
        select_embedder("all-MiniLM-L6-v2", "cpu", 64, "tensorrt", onnx_cache)  # type: ignore[arg-type]
    # A model the exporter does not support (no modules.json) is not exported.
    assert not exportable(str(tmp_path))
    assert Settings(embedding_backend="onnx-int8").embedding_backend == "onnx-int8"
    assert Settings().embedding_backend == "auto"
