"""First ingest with PDF/DOCX partitioning in the ingest process vs a pool of worker processes.

    .venv/bin/python bench/partition_bench.py [--corpus benefits|manuals] [--processes 1,2]
        [--rounds 2] [--quick] [--json] [--http-port 28080 --grpc-port 25051]

Each run is a real `freshkb ingest` of the corpus as a new source with cold caches, exactly as
bench/peer_ingest.py runs freshkb's side, with FRESHKB_PARTITION_PROCESSES set per run. The
settings alternate round by round (1, 2, 1, 2, ...) so that a machine getting busier or quieter
does not favour one of them. Prints per setting the median seconds, load stage, pages/s and
peak PSS of the process tree, and the speed ratio against the first setting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import add_port_options, pdf_pages
from peer_ingest import CORPORA, copy_corpus, run_freshkb


def measure(
    corpus: str, settings: list[int], rounds: int, quick: bool, ports: tuple[int, int]
) -> dict[int, list[dict[str, Any]]]:
    """Every setting `rounds` times, alternating; the runs of each setting."""
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in settings}
    work = Path(tempfile.mkdtemp(prefix="freshkb-partition-"))
    try:
        source = copy_corpus(corpus, work / "source", quick)
        pages = pdf_pages(source)
        for round_number in range(rounds):
            for processes in settings:
                os.environ["FRESHKB_PARTITION_PROCESSES"] = str(processes)
                run_dir = work / f"run-{round_number}-{processes}"
                side = run_freshkb(source, run_dir, ports, pages)
                shutil.rmtree(run_dir, ignore_errors=True)
                runs[processes].append(
                    {
                        "seconds": round(side.seconds, 1),
                        "load_s": side.stage_seconds.get("load"),
                        "pages_per_s": round(side.pages_per_s, 2),
                        "chunks": side.chunks,
                        "peak_tree_pss_mb": round(side.peak_tree_pss_mb, 1),
                    }
                )
                print(
                    f"  {processes} process(es), round {round_number + 1}: {runs[processes][-1]}",
                    file=sys.stderr,
                )
    finally:
        os.environ.pop("FRESHKB_PARTITION_PROCESSES", None)
        shutil.rmtree(work, ignore_errors=True)
    return runs


def summary(runs: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Median figures per setting, with the speed ratio against the first setting."""
    rows = []
    base = None
    for processes, measured in runs.items():
        median = {
            key: statistics.median(r[key] for r in measured)
            for key in ("seconds", "load_s", "pages_per_s", "peak_tree_pss_mb")
        }
        base = base or median["seconds"]
        rows.append(
            {"processes": processes, **median, "speed_vs_first": round(base / median["seconds"], 3)}
        )
    return rows


def main() -> int:
    """Run the comparison and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=list(CORPORA), default="benefits")
    parser.add_argument("--processes", default="1,2", help="settings compared, the first the base")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a small subset of the corpus")
    parser.add_argument("--json", action="store_true")
    add_port_options(parser)
    args = parser.parse_args()
    settings = [int(n) for n in args.processes.split(",")]
    runs = measure(args.corpus, settings, args.rounds, args.quick, (args.http_port, args.grpc_port))
    rows = summary(runs)
    if args.json:
        print(json.dumps({"corpus": args.corpus, "rows": rows, "runs": runs}, indent=2))
        return 0
    print(f"\nfirst ingest of {args.corpus}, median of {args.rounds} round(s)")
    print("| partition processes | seconds | load stage s | pages/s | peak PSS MB | speed x |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['processes']} | {row['seconds']} | {row['load_s']} | {row['pages_per_s']} "
            f"| {row['peak_tree_pss_mb']} | {row['speed_vs_first']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
