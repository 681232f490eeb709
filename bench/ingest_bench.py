"""Ingest benchmark: first ingest, unchanged re-ingest and one-file edit of a documents folder.

    .venv/bin/python bench/ingest_bench.py [FOLDER] [--include GLOB] [--json]

Default FOLDER: ../shared/corpus/policies/benefits-pdfs. Runs against a fresh, throw-away data
directory and a Weaviate on ports 28080/25051, so neither the user's index nor their embedding
cache is touched (the first run therefore computes every embedding). Prints the figures and the
ratios side by side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import use_throwaway_environment  # noqa: E402


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", nargs="?", default=str(ROOT.parent / "shared/corpus/policies/benefits-pdfs")
    )
    parser.add_argument("--include", action="append", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="freshkb-bench-"))
    use_throwaway_environment(work)
    source_dir = work / "source"
    shutil.copytree(args.folder, source_dir)

    from freshkb.core.config import Settings
    from freshkb.core.sources import parse_source
    from freshkb.flows.ingest import ingest_source
    from freshkb.loaders.base import list_files
    from freshkb.loaders.documents import BINARY_FORMATS, TEXT_FORMATS
    from freshkb.store import server

    settings = Settings()
    started = time.perf_counter()
    server.up(settings)
    server_start = time.perf_counter() - started
    config = {"name": "bench", "kind": "documents", "location": str(source_dir), "owner": "bench"}
    if args.include:
        config["include"] = args.include
    try:
        runs = {}
        for label in ("first ingest", "unchanged re-ingest"):
            started = time.perf_counter()
            report = ingest_source(source_config=config)
            runs[label] = (time.perf_counter() - started, report)
        # The first file the source reads: not one outside --include, nor an unsupported one.
        victim = sorted(
            path
            for path, _ in list_files(parse_source(config))
            if path.suffix.lower() in {*TEXT_FORMATS, *BINARY_FORMATS}
        )[0]
        with victim.open("ab") as handle:  # one more byte: a new content hash
            handle.write(b"\n")
        started = time.perf_counter()
        report = ingest_source(source_config=config)
        runs["one file edited"] = (time.perf_counter() - started, report)
    finally:
        server.down(settings)
        shutil.rmtree(work, ignore_errors=True)

    first_seconds = runs["first ingest"][0]
    rows = []
    for label, (seconds, report) in runs.items():
        rows.append(
            {
                "run": label,
                "seconds": round(seconds, 2),
                "vs_first": round(seconds / first_seconds, 3),
                "documents": report.documents_seen,
                "changed_or_new": report.documents_new + report.documents_changed,
                "failed": report.documents_failed,
                "embedded": report.embeddings_computed,
                "written": report.objects_written,
                "stages": report.stage_seconds,
            }
        )
    if args.json:
        print(json.dumps({"folder": args.folder, "server_start_s": server_start, "runs": rows}))
        return 0
    print(f"folder: {args.folder}  (Weaviate start {server_start:.1f}s, not counted)")
    print(
        f"{'run':<22}{'seconds':>9}{'x first':>9}{'docs':>6}{'new/chg':>8}{'failed':>7}"
        f"{'embedded':>9}{'written':>8}  stages"
    )
    for r in rows:
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["stages"].items())
        print(
            f"{r['run']:<22}{r['seconds']:>9.2f}{r['vs_first']:>9.3f}{r['documents']:>6}"
            f"{r['changed_or_new']:>8}{r['failed']:>7}{r['embedded']:>9}{r['written']:>8}"
            f"  {stages}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
