"""Peak RSS of a first ingest as the corpus grows: a folder once, then the same files N times.

    .venv/bin/python bench/rss_bench.py [FOLDER] [--copies 1,10] [--json]
        [--http-port 28080 --grpc-port 25051]

Default FOLDER: ../shared/corpus/policies/outdoor-manuals. For each copy count a fresh folder
holds the files that many times under new names (copy-K/...), so every copy is a new document;
each ingest runs in a process of its own (peak RSS only grows within a process), against a
fresh throw-away data directory (no cached vectors), one Weaviate on the given ports and one
Prefect server (started here, so no run pays for a temporary one).
Reports the ingest process's peak RSS (getrusage), its RSS before the flow started (modules
and models loaded), the peak of its child processes (PDF partition workers), the wall time,
the per-stage seconds of the run report, and the ratio of each peak to the first one's; the
goal of issue 13 is a ratio under 1.5 for 10 copies.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import (  # noqa: E402
    WEAVIATE_GRPC_PORT,
    WEAVIATE_HTTP_PORT,
    use_throwaway_environment,
)

GOAL_RATIO = 1.5


def replicate(folder: Path, copies: int, into: Path) -> int:
    """Copy every file of `folder` `copies` times into `into` under new names; files copied."""
    count = 0
    for copy in range(copies):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                target = into / f"copy-{copy}" / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                count += 1
    return count


def measure_one(folder: Path) -> dict[str, Any]:
    """Ingest `folder` in this process (the environment is already set); the figures."""
    from freshkb.core.config import Settings
    from freshkb.embeddings.embedder import settings_for_index
    from freshkb.flows.ingest import ingest_source
    from freshkb.flows.tasks import embedding_model

    # the model a first ingest loads (int8 on a CPU) in memory before the baseline is read
    embedding_model(settings_for_index(Settings(), None))
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = {"name": "rss-bench", "kind": "documents", "location": str(folder), "owner": "bench"}
    started = time.perf_counter()
    report = ingest_source(source_config=config)
    seconds = time.perf_counter() - started
    return {
        "status": report.status,
        "error": report.error,
        "documents": report.documents_seen,
        "chunks": report.chunks_embedded,
        "seconds": round(seconds, 2),
        "baseline_mb": round(baseline_kb / 1024, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "stages": {k: round(v, 2) for k, v in report.stage_seconds.items()},
    }


def run_scale(folder: Path, copies: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """One ingest of `copies` copies of `folder`, in a fresh process and data directory."""
    scale = work / f"x{copies}"
    files = replicate(folder, copies, scale / "source")
    child_env = {**env, "FRESHKB_DATA_DIR": str(scale / "data")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(scale / "source")],
        env=child_env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"x{copies} ingest failed ({done.returncode}): {done.stderr[-3000:]}")
    return {"copies": copies, "files": files, **json.loads(lines[-1])}


def main() -> int:
    """Run the benchmark and print its table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", nargs="?", default=str(ROOT.parent / "shared/corpus/policies/outdoor-manuals")
    )
    parser.add_argument("--copies", default="1,10", help="comma-separated copy counts")
    parser.add_argument("--http-port", default=WEAVIATE_HTTP_PORT)
    parser.add_argument("--grpc-port", default=WEAVIATE_GRPC_PORT)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(Path(args.child))))
        return 0

    work = Path(tempfile.mkdtemp(prefix="freshkb-rss-"))
    use_throwaway_environment(work)
    os.environ["FRESHKB_WEAVIATE_HTTP_PORT"] = str(args.http_port)
    os.environ["FRESHKB_WEAVIATE_GRPC_PORT"] = str(args.grpc_port)
    from prefect.server.api.server import SubprocessASGIServer

    from freshkb.core.config import Settings
    from freshkb.store import server

    settings = Settings()
    server.up(settings)
    prefect = SubprocessASGIServer()
    try:
        prefect.start(timeout=300)
        env = {**os.environ, "PREFECT_API_URL": prefect.api_url}
        rows = [run_scale(Path(args.folder), int(n), work, env) for n in args.copies.split(",")]
    finally:
        prefect.stop()
        server.down(settings)
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row["peak_ratio"] = round(row["peak_mb"] / rows[0]["peak_mb"], 3)
        row["growth_ratio"] = round(
            max(row["peak_mb"] - row["baseline_mb"], 1.0)
            / max(rows[0]["peak_mb"] - rows[0]["baseline_mb"], 1.0),
            2,
        )
    verdict = rows[-1]["peak_ratio"] < GOAL_RATIO
    if args.json:
        print(
            json.dumps(
                {"folder": args.folder, "goal_ratio": GOAL_RATIO, "pass": verdict, "runs": rows}
            )
        )
        return 0
    print(f"folder: {args.folder}")
    print(
        f"{'copies':>6}{'files':>7}{'chunks':>8}{'seconds':>9}{'base MB':>9}{'peak MB':>9}"
        f"{'kids MB':>9}{'x first':>8}  stages"
    )
    for r in rows:
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["stages"].items())
        print(
            f"{r['copies']:>6}{r['files']:>7}{r['chunks']:>8}{r['seconds']:>9.1f}"
            f"{r['baseline_mb']:>9.0f}{r['peak_mb']:>9.0f}{r['children_peak_mb']:>9.0f}"
            f"{r['peak_ratio']:>8.2f}  {stages}"
        )
    print(
        f"peak ratio {rows[-1]['peak_ratio']:.2f} (goal < {GOAL_RATIO}): "
        + ("pass" if verdict else "FAIL")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
