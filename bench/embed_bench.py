"""Embedding and screening speed: freshkb's embedder against a plain SentenceTransformer, and
the injection screen against the embedding stage, on the same chunks.

    .venv/bin/python bench/embed_bench.py [--corpus manuals|pdfs|both] [--limit N] [--json]

The chunks are ../shared/corpus/policies/outdoor-manuals and/or benefits-pdfs, loaded and
chunked as the ingest flow does. Rows: `SentenceTransformer(path).encode(texts)` with its
defaults (the peer), then freshkb's embedder on each backend (what the embed stage runs,
texts with their titles in front); then the screen over the chunks' text: the guard on torch as
before issue 13, on its default backend with an empty verdict cache (a first ingest), and again
with the cache filled (a re-ingest of the same text). Goals (issue 13): embedding >= 1.5x the
peer; screening <= 0.10 of the embedding stage. Runs in a throw-away cache directory, so the
ONNX export (timed apart, made once per machine) and the verdict cache start empty.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import use_throwaway_environment  # noqa: E402

CORPORA = {"manuals": ("outdoor-manuals", "*.md"), "pdfs": ("benefits-pdfs", "*.pdf")}
BACKENDS = ("torch", "onnx", "onnx-int8")


def load_chunks(shared: Path, corpus: str, limit: int | None) -> tuple[list[str], list[str]]:
    """(texts the embed stage embeds, texts the screen reads) of the chosen corpora."""
    from freshkb.core.sources import parse_source
    from freshkb.embeddings.chunking import ChunkingPolicy, chunk_documents, embedding_text
    from freshkb.loaders import loader_for

    names = list(CORPORA) if corpus == "both" else [corpus]
    chunks = []
    for name in names:
        folder, include = CORPORA[name]
        source = parse_source(
            {
                "name": name,
                "kind": "documents",
                "location": str(shared / "corpus" / "policies" / folder),
                "owner": "embed-bench",
                "include": [include],
            }
        )
        documents = loader_for(source).load().documents
        chunks += chunk_documents(documents, ChunkingPolicy.for_window(256))
    chunks = chunks[:limit]
    embedded = [embedding_text(c.title, c.section_title, c.text) for c in chunks]
    return embedded, [c.text for c in chunks]


def timed(run: Callable[[], object]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def embed_rows(texts: list[str], cache_dir: Path) -> list[dict[str, object]]:
    """The peer and each freshkb backend over the same texts."""
    from sentence_transformers import SentenceTransformer

    from freshkb.embeddings.embedder import resolve_model, select_embedder

    load_from, _ = resolve_model("all-MiniLM-L6-v2")
    peer = SentenceTransformer(load_from)
    peer.encode(texts[:8])  # warm-up, as for every row
    peer_seconds = timed(lambda: peer.encode(texts))
    rows: list[dict[str, object]] = [
        {"embedder": "SentenceTransformer.encode (peer)", "seconds": peer_seconds}
    ]
    for backend in BACKENDS:
        started = time.perf_counter()
        embedder = select_embedder("all-MiniLM-L6-v2", "cpu", 64, backend, cache_dir)  # type: ignore[arg-type]
        embedder.embed(texts[:8])
        setup = time.perf_counter() - started
        seconds = timed(lambda embedder=embedder: embedder.embed(texts))  # type: ignore[misc]
        rows.append({"embedder": f"freshkb {backend}", "seconds": seconds, "setup_seconds": setup})
    for row in rows:
        row["chunks_per_s"] = len(texts) / float(row["seconds"])  # type: ignore[arg-type]
        row["vs_peer"] = peer_seconds / float(row["seconds"])  # type: ignore[arg-type]
    return rows


def screen_rows(texts: list[str], cache_dir: Path, embed_seconds: float) -> list[dict[str, object]]:
    """The screen before (torch, no prefilter, no cache), without its prefilter
    (screening/prefilter.py), and as it runs, cold and warm, against the embed stage's time."""
    from freshkb.embeddings.embedder import get_embedder
    from freshkb.screening import build_guard, load_guard
    from freshkb.screening.guard import detector_embedder
    from freshkb.screening.verdict_cache import VerdictCache, screen_documents, verdict_cache_path

    torch = get_embedder("all-MiniLM-L6-v2", "cpu")
    before = build_guard(torch, None, use_shipped=True, prefilter=False)
    unfiltered = build_guard(detector_embedder(cache_dir), None, use_shipped=True, prefilter=False)
    guard = load_guard(cache_dir=cache_dir)
    cache = VerdictCache(verdict_cache_path(cache_dir))
    runs = {
        "screen, torch, no verdict cache (before)": lambda: before.inspect_documents(texts),
        "screen, default backend, no prefilter, no cache": lambda: unfiltered.inspect_documents(
            texts
        ),
        "screen, default backend, empty verdict cache": lambda: screen_documents(
            guard, texts, cache
        ),
        "screen, verdict cache filled (re-ingest)": lambda: screen_documents(guard, texts, cache),
    }
    rows = []
    for name, run in runs.items():
        seconds = timed(run)
        rows.append({"screen": name, "seconds": seconds, "vs_embed_stage": seconds / embed_seconds})
    cache.close()
    return rows


def main() -> int:
    """Measure and print the table (or --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--corpus", choices=["manuals", "pdfs", "both"], default="both")
    parser.add_argument("--limit", type=int, default=None, help="first N chunks only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="freshkb-embed-bench-"))
    use_throwaway_environment(work)
    cache_dir = work / "cache"
    os.environ["FRESHKB_CACHE_DIR"] = str(cache_dir)
    embedded, screened = load_chunks(args.shared, args.corpus, args.limit)
    embed = embed_rows(embedded, cache_dir)
    # the embed stage of a first ingest on a CPU: a new index is made of int8 vectors
    chosen = next(r for r in embed if r["embedder"] == "freshkb onnx-int8")
    screen = screen_rows(screened, cache_dir, float(chosen["seconds"]))  # type: ignore[arg-type]
    result = {
        "chunks": len(embedded),
        "corpus": args.corpus,
        "cores": os.cpu_count(),
        "embed": embed,
        "screen": screen,
        "goals": {"embed_vs_peer": 1.5, "screen_vs_embed_stage": 0.10},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(embedded)} chunks ({args.corpus}), {os.cpu_count()} cores")
    print(f"{'embedder':<36}{'seconds':>9}{'chunks/s':>10}{'x peer':>8}{'setup s':>9}")
    for row in embed:
        setup = f"{row['setup_seconds']:.1f}" if "setup_seconds" in row else ""
        print(
            f"{row['embedder']:<36}{row['seconds']:>9.2f}{row['chunks_per_s']:>10.1f}"
            f"{row['vs_peer']:>8.2f}{setup:>9}"
        )
    print(f"\n{'screen (vs the freshkb onnx embed stage)':<48}{'seconds':>9}{'x embed':>9}")
    for row in screen:
        print(f"{row['screen']:<48}{row['seconds']:>9.2f}{row['vs_embed_stage']:>9.3f}")
    print("goals: embedding >= 1.50x peer; screening <= 0.100x the embed stage")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
