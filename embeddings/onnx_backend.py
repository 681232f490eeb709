"""ONNX Runtime embedding on the CPU: the model exported locally from its own weights, once.

The sentence-transformers model (transformer, mean pooling, normalisation) is exported with
`torch.onnx.export` into the cache directory on first use, keyed by the model id, its weights
file and EXPORT_VERSION, so nothing is downloaded and a changed model is exported again. The
`int8` variant is the same graph with its matrix weights quantised by ONNX Runtime's dynamic
quantisation. Texts are tokenised once, sorted by length and batched, so a batch pads only to
its own longest text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from freshkb.core.errors import ConfigError

log = logging.getLogger(__name__)

# Bump when the exported graph changes (inputs, pooling, opset): older exports are then
# ignored and exported again.
EXPORT_VERSION = 1
OPSET = 17
Variant = Literal["fp32", "int8"]
# Texts per ONNX Runtime call: past ~32 sorted texts the batch gains nothing on a CPU, and
# small batches keep padding low.
BATCH = 32
# Suffix of the model id of int8 vectors: they differ from the model's own enough (cosine
# 0.986-0.99) that an index must not mix them, so the store's model-change rebuild sees a new
# model when the backend changes to or from int8.
INT8_SUFFIX = "+onnx-int8"


def cpu_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def export_key(model_id: str, load_from: str) -> str:
    """sha256 of what an export depends on: the model id, its weights and EXPORT_VERSION."""
    digest = hashlib.sha256(f"{model_id}\n{EXPORT_VERSION}\n{OPSET}\n".encode())
    for weights in sorted(Path(load_from).glob("*.safetensors")) + sorted(
        Path(load_from).glob("*.bin")
    ):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()


def export_path(cache_dir: Path, model_id: str, load_from: str, variant: Variant) -> Path:
    """Where the export of a model (in one variant) is kept under the cache directory."""
    name = model_id.replace("/", "--").replace(":", "-")
    key = export_key(model_id, load_from)[:16]
    return cache_dir / "onnx" / f"{name}-{key}-{variant}.onnx"


def exportable(load_from: str) -> bool:
    """True for a local sentence-transformers folder of transformer, mean pooling, normalise."""
    folder = Path(load_from)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text())
    except (OSError, ValueError, KeyError, IndexError):
        return False
    mean_only = pooling.get("pooling_mode_mean_tokens") and not any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens")
    )
    return kinds == ["Transformer", "Pooling", "Normalize"] and bool(mean_only)


def _export_fp32(load_from: str, path: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    class MeanPooled(torch.nn.Module):
        """The transformer with mean pooling and normalisation, as one graph."""

        def __init__(self, encoder: Any):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    model = SentenceTransformer(load_from, device="cpu")
    wrapped = MeanPooled(model[0].auto_model).eval()
    sample = model.tokenize(["an example sentence to trace the graph with"])
    inputs = tuple(sample[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "tokens"} for n in names}
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            inputs,
            str(path),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter needs no onnxscript
        )


def _quantise(fp32: Path, path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel scales with a 7-bit range: plain u8s8 saturates on AVX2 without VNNI and gave
    # cosines down to 0.91 to the fp32 vectors on the outdoor manuals; this gives >= 0.986.
    quantize_dynamic(
        str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
    )


def ensure_export(cache_dir: Path, model_id: str, load_from: str, variant: Variant) -> Path:
    """The ONNX file of the model in `variant`, exported (and quantised) now if not cached."""
    path = export_path(cache_dir, model_id, load_from, variant)
    if path.is_file():
        return path
    fp32 = export_path(cache_dir, model_id, load_from, "fp32")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Per-process names, renamed into place: two processes exporting at once never read half.
    if not fp32.is_file():
        log.info("exporting %s to ONNX under %s (once)", model_id, fp32.parent)
        partial = fp32.with_name(f"{fp32.name}.{os.getpid()}.tmp")
        _export_fp32(load_from, partial)
        partial.replace(fp32)
    if variant == "int8" and not path.is_file():
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        _quantise(fp32, partial)
        partial.replace(path)
    return path


Tokenize = Callable[[list[str]], list[list[int]]]


def load_tokenizer(load_from: str, max_tokens: int) -> tuple[Tokenize, int]:
    """The model's fast tokenizer, truncating to max_tokens without padding, and its pad id.

    Read from tokenizer.json with the `tokenizers` library (what transformers' fast tokenizer
    runs, without importing transformers: seconds off a service's start); a model folder
    without tokenizer.json goes through transformers' AutoTokenizer.
    """
    path = Path(load_from) / "tokenizer.json"
    if not path.is_file():
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(load_from)

        def auto_ids(texts: list[str]) -> list[list[int]]:
            encoded = auto(texts, truncation=True, max_length=max_tokens, padding=False)
            return list(encoded["input_ids"])

        return auto_ids, int(auto.pad_token_id or 0)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    pad = tokenizer.token_to_id(_pad_token(Path(load_from)))

    def ids(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in tokenizer.encode_batch(texts)]

    return ids, int(pad or 0)


def _pad_token(folder: Path) -> str:
    try:
        special = json.loads((folder / "special_tokens_map.json").read_text())
    except (OSError, ValueError):
        return "[PAD]"
    pad = special.get("pad_token", "[PAD]")
    return str(pad["content"] if isinstance(pad, dict) else pad)


class OnnxEmbedder:
    """An Embedder running an exported sentence-transformers model with ONNX Runtime."""

    def __init__(
        self,
        load_from: str,
        model_id: str,
        cache_dir: Path,
        variant: Variant = "fp32",
        threads: int | None = None,
    ):
        import onnxruntime as ort

        if not exportable(load_from):
            raise ConfigError(
                f"{load_from}: not a transformer + mean pooling + normalise model, which the "
                "onnx backend supports; set FRESHKB_EMBEDDING_BACKEND=torch"
            )
        self.variant = variant
        self.model_id = model_id + (INT8_SUFFIX if variant == "int8" else "")
        self.path = ensure_export(cache_dir, model_id, load_from, variant)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: a server shares its cores with Weaviate and
        # its own request threads, and spinning waits burnt a core's worth under 16 clients.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        config = json.loads((Path(load_from) / "sentence_bert_config.json").read_text())
        self.max_tokens = int(config.get("max_seq_length") or 256)
        self._tokenize, self._pad_id = load_tokenizer(load_from, self.max_tokens)
        self.dimension = int(self._session.get_outputs()[0].shape[1] or self._probe_dimension())

    def _probe_dimension(self) -> int:
        return len(self.embed(["dimension"])[0])

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length vectors, one per text, in order; batches are formed by length."""
        if not texts:
            return []
        ids = self._tokenize(list(texts))
        order = np.argsort([len(row) for row in ids], kind="stable")
        out: list[np.ndarray] = []
        for start in range(0, len(order), BATCH):
            out.append(self._run([ids[i] for i in order[start : start + BATCH]]))
        vectors = np.concatenate(out)
        placed = np.empty_like(vectors)
        placed[order] = vectors
        return placed.astype(np.float64).tolist()  # type: ignore[no-any-return,unused-ignore]

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        (vectors,) = self._session.run(["embedding"], feeds)
        return np.asarray(vectors, dtype=np.float32)
