"""One-off `freshkb ingest` wall time, this code against another copy of it (before/after).

    .venv/bin/python bench/oneoff_bench.py --before DIR [--rounds 3] [--new-prefect-home]
        [--corpus FOLDER] [--json] [--http-port 28080 --grpc-port 25051]

Runs the real CLI, `freshkb ingest --source NAME --kind documents --path FOLDER --json`
(default: the bundled sample/policies), as a user does with no Prefect server configured, so
every run starts Prefect's temporary API server. The two copies of the code (`--before DIR`,
e.g. `git archive <commit> | tar -x -C DIR`, and this checkout) alternate round by round
against one Weaviate, each run a new source name (a first ingest of it). By default each copy
keeps its own Prefect home across rounds, as a user's ~/.prefect is; `--new-prefect-home` gives
every run a new one, whose database Prefect then creates first. Prints the median seconds of
each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import ROOT, add_port_options, cold_cache, managed_weaviate, run_measured


def one_run(code: Path, corpus: Path, work: Path, name: str, home: Path) -> float:
    """Seconds of one `freshkb ingest` run from `code`."""
    env = dict(os.environ, PYTHONPATH=str(code), PREFECT_HOME=str(home))
    env["FRESHKB_CACHE_DIR"] = str(cold_cache(work / name))
    env.pop("PREFECT_API_URL", None)
    command = [str(ROOT / ".venv/bin/freshkb"), "ingest", "--source", name]
    command += ["--kind", "documents", "--path", str(corpus), "--json"]
    measured = run_measured(command, env=env, cwd=work)
    if measured.returncode != 0:
        raise SystemExit(f"{code}: freshkb ingest failed: {measured.stderr[-2000:]}")
    return measured.seconds


def main() -> int:
    """Alternate the two copies and print their medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other copy of the code")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=ROOT / "sample/policies")
    parser.add_argument("--new-prefect-home", action="store_true")
    parser.add_argument("--json", action="store_true")
    add_port_options(parser)
    args = parser.parse_args()
    sides = {"before": args.before.resolve(), "after": ROOT}
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="freshkb-oneoff-") as tmp:
        work = Path(tmp)
        with managed_weaviate(work, args.http_port, args.grpc_port):
            for round_number in range(1, args.rounds + 1):
                for side, code in sides.items():
                    home = work / (
                        f"prefect-{side}-{round_number}"
                        if args.new_prefect_home
                        else f"prefect-{side}"
                    )
                    taken = one_run(
                        code, args.corpus.resolve(), work, f"{side}-{round_number}", home
                    )
                    seconds[side].append(round(taken, 2))
                    print(f"  {side}, round {round_number}: {taken:.1f} s", file=sys.stderr)
    medians = {side: statistics.median(values) for side, values in seconds.items()}
    result = {
        "corpus": str(args.corpus),
        "new_prefect_home": args.new_prefect_home,
        "seconds": seconds,
        "median_s": medians,
        "after_vs_before": round(medians["after"] / medians["before"], 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"one-off freshkb ingest of {args.corpus}, median of {args.rounds} round(s)")
        print(f"  before {medians['before']:.1f} s, after {medians['after']:.1f} s")
        print(f"  after / before {result['after_vs_before']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
