"""Answer quality on the development cases: a thin caller of the evaluation harness.

    .venv/bin/python bench/answer_quality.py [--shared DIR] [--llm off|URL] [--k 5] [--json]

The same as `freshkb eval --cases DIR/eval/dev --corpus DIR/corpus` (evaluation/harness.py),
on the benchmarks' Weaviate ports 28080/25051 and a throw-away data directory, printing every
figure rather than only the SLO verdicts. Exit 1 when an SLO target of slo.yaml fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import WEAVIATE_GRPC_PORT, WEAVIATE_HTTP_PORT, use_throwaway_environment  # noqa: E402


def main() -> int:
    """Evaluate, print the figures and the SLO verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--llm", default="off")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    shared = Path(args.shared)
    with tempfile.TemporaryDirectory(prefix="freshkb-quality-") as work:
        use_throwaway_environment(Path(work))
        from freshkb.core.config import Settings
        from freshkb.evaluation.harness import EvalOptions, run_evaluation

        options = EvalOptions(
            cases_dir=shared / "eval" / "dev",
            corpus=shared / "corpus",
            llm=args.llm,
            k=args.k,
            limit=args.limit,
            slo=ROOT / "slo.yaml",
            weaviate_ports=(int(WEAVIATE_HTTP_PORT), int(WEAVIATE_GRPC_PORT)),
        )
        result = run_evaluation(options, Settings())
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        for name, value in result.metrics.items():
            print(f"  {name:<36}{value:>12.4g}")
        for check in result.checks:
            print(f"  {check.status:<13}{check.name} {check.bound} {check.target:g}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
