"""The ONNX Runtime backend: exported locally from the bundled weights, vectors as torch's."""

from __future__ import annotations

import subprocess
import sys
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
from freshkb.embeddings.onnx_backend import (
    INT8_SUFFIX,
    OnnxEmbedder,
    export_path,
    exportable,
    load_tokenizer,
)

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


@pytest.mark.timeout(120)
def test_onnx_threads_per_call_default_to_the_cores_and_the_answer_service_uses_one(
    onnx_cache: Path,
):
    from freshkb.embeddings.onnx_backend import cpu_threads
    from freshkb.serving.runtime import QUERY_EMBED_THREADS

    def threads(embedder: object) -> int:
        assert isinstance(embedder, OnnxEmbedder)
        return int(embedder._session.get_session_options().intra_op_num_threads)

    ingest = select_embedder("all-MiniLM-L6-v2", "cpu", 64, "onnx-int8", onnx_cache)
    assert threads(ingest) == cpu_threads()
    query = select_embedder(
        "all-MiniLM-L6-v2", "cpu", 64, "onnx-int8", onnx_cache, threads=QUERY_EMBED_THREADS
    )
    assert QUERY_EMBED_THREADS == 1 and threads(query) == 1
    # the same vectors either way (up to the order of float sums)
    assert np.allclose(query.embed(TEXTS[:3]), ingest.embed(TEXTS[:3]), atol=1e-5)


def test_tokenizer_read_from_tokenizer_json_gives_transformers_ids():
    from transformers import AutoTokenizer

    load_from, _ = resolve_model("all-MiniLM-L6-v2")
    tokenize, pad_id = load_tokenizer(load_from, 256)
    reference = AutoTokenizer.from_pretrained(load_from)
    expected = reference(TEXTS, truncation=True, max_length=256, padding=False)["input_ids"]
    assert tokenize(TEXTS) == expected
    assert max(len(row) for row in tokenize(TEXTS)) == 256  # the long text is truncated
    assert pad_id == reference.pad_token_id


@pytest.mark.timeout(120)
def test_auto_device_on_a_machine_without_a_gpu_driver_never_imports_torch(onnx_cache: Path):
    # The service's start must not pay for importing torch and transformers on a CPU machine
    # once the ONNX export exists (made here first, in this process, if no earlier test did).
    load_from, model_id = resolve_model("all-MiniLM-L6-v2")
    OnnxEmbedder(load_from, model_id, onnx_cache)
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from freshkb.embeddings.embedder import gpu_possible, select_embedder\n"
        "assert not gpu_possible(), 'this machine shows a GPU driver'\n"
        f"e = select_embedder('all-MiniLM-L6-v2', 'auto', 64, 'auto', Path({str(onnx_cache)!r}))\n"
        "assert len(e.embed(['hello'])[0]) == 384\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers') "
        "if m in sys.modules)\n"
        "print(type(e).__name__, heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OnnxEmbedder", "[]"]


def test_a_gpu_driver_on_the_machine_makes_auto_ask_torch(monkeypatch: pytest.MonkeyPatch):
    import freshkb.embeddings.embedder as embedder

    monkeypatch.setattr(embedder, "GPU_DEVICE_FILES", ("/proc/self/status",))
    assert embedder.gpu_possible()
    # torch (imported by now in this test process) finds no CUDA device here: still the CPU.
    assert embedder.resolve_device("auto") == "cpu"
    monkeypatch.setattr(embedder, "GPU_DEVICE_FILES", ("/nonexistent/nvidia",))
    monkeypatch.delitem(sys.modules, "torch")
    assert not embedder.gpu_possible()


def test_auto_follows_the_index_and_makes_a_new_index_int8_on_a_cpu(tmp_path: Path):
    from freshkb.embeddings.embedder import backend_for_index, base_model_id, settings_for_index

    int8_id, fp32_id = BUNDLED_MODEL_ID + INT8_SUFFIX, BUNDLED_MODEL_ID

    def auto(device: str, index: str | None, cache: Path | None = tmp_path) -> str:
        return backend_for_index("auto", "all-MiniLM-L6-v2", device, cache, index)

    # An index keeps the vectors it was made of, whatever embeds: CPU or GPU.
    assert auto("cpu", int8_id) == auto("cuda", int8_id) == "onnx-int8"
    assert auto("cpu", fp32_id) == auto("cuda", fp32_id) == "auto"
    # A new index (none yet, or one of another model: a rebuild): int8 where a CPU embeds.
    assert auto("cpu", None) == auto("cpu", "local:other-model") == "onnx-int8"
    assert auto("cuda", None) == "auto"
    assert auto("cpu", None, cache=None) == "auto"  # nowhere to export to: fp32 torch
    # A backend the user set is used as set, against any index.
    for backend in ("torch", "onnx", "onnx-int8"):
        assert backend_for_index(backend, "all-MiniLM-L6-v2", "cpu", tmp_path, fp32_id) == backend

    settings = Settings(data_dir=tmp_path, embedding_device="cpu")
    assert settings_for_index(settings, None).embedding_backend == "onnx-int8"
    assert settings_for_index(settings, fp32_id) is settings
    assert base_model_id(int8_id) == base_model_id(fp32_id) == fp32_id


def test_the_screens_parameters_and_verdicts_serve_both_precisions():
    from freshkb.screening.fitted import fit_key, question_key

    int8_id = BUNDLED_MODEL_ID + INT8_SUFFIX
    assert fit_key(int8_id) == fit_key(BUNDLED_MODEL_ID)
    assert question_key(int8_id) == question_key(BUNDLED_MODEL_ID)
    assert fit_key("local:other-model") != fit_key(BUNDLED_MODEL_ID)


def test_a_new_index_falls_back_to_fp32_when_int8_cannot_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import freshkb.embeddings.onnx_backend as onnx_backend
    from freshkb.embeddings.embedder import settings_for_index

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("quantisation failed")

    monkeypatch.setattr(onnx_backend, "OnnxEmbedder", broken)
    # its own cache directory: select_embedder keeps what it loaded per directory
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache", embedding_device="cpu")
    # A new index: speed lost, not the run.
    assert settings_for_index(settings, None).embedding_backend == "auto"
    # An index of int8 vectors must be embedded in int8: that fails loudly where it is used.
    int8 = settings_for_index(settings, BUNDLED_MODEL_ID + INT8_SUFFIX)
    assert int8.embedding_backend == "onnx-int8"
    with pytest.raises(ConfigError, match="could not run on ONNX Runtime"):
        select_embedder("all-MiniLM-L6-v2", "cpu", 64, "onnx-int8", int8.cache_dir)
