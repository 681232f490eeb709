"""Answer quality on the benefits PDFs: retrieval hit rate, answered vs. refused/escalated.

    .venv/bin/python bench/answer_quality.py [--shared DIR] [--k 5] [--json]

Ingests ../shared/corpus/policies/benefits-pdfs into a throw-away data directory and a Weaviate
on ports 28080/25051, then runs the development cases of ../shared/eval/dev:
- benefits_qa.jsonl (answerable): does the page the truth cites (`[FILE.pdf#page=N]`) come
  back in the top 1 / top k of `search`, and does `answer` answer (normal or degraded) citing
  that page, rather than refusing or escalating;
- benefits_out_of_scope.jsonl (not answerable from the corpus): share refused or escalated.
Answers are taken with the LLM endpoint unreachable and its circuit open, so the figures
measure retrieval and the answer path's own decisions (the quoted answer), not a model.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import use_throwaway_environment  # noqa: E402

TRUTH_CITATION = re.compile(r"\[([^\]#]+\.pdf)#page=(\d+)\]")
ANSWERED = ("normal", "degraded")


def read_cases(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of one dev file, or exit naming the missing file."""
    if not path.is_file():
        sys.exit(f"answer_quality: {path} is missing; put ../shared beside the repo")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_pages(truth: str) -> set[tuple[str, int]]:
    """The (file, page) pairs a truth cites."""
    return {(name, int(page)) for name, page in TRUTH_CITATION.findall(truth)}


def evaluate(service: Any, qa: list[dict[str, Any]], oos: list[dict[str, Any]], k: int) -> dict:
    """Run every case through search and answer; returns the rates and the misses."""
    top1 = topk = cited = answered = 0
    scored = 0
    misses: list[str] = []
    modes_in: Counter[str] = Counter()
    for case in qa:
        wanted = expected_pages(case["truth"])
        if not wanted:
            continue
        scored += 1
        hits, _ = service.search(case["question"], None, k)
        found = [(Path(hit.document_key).name, hit.page) for hit in hits]
        top1 += bool(found and found[0] in wanted)
        topk += any(pair in wanted for pair in found)
        if not any(pair in wanted for pair in found):
            misses.append(case["question"])
        result = service.answer(case["question"], k=k)
        modes_in[result.mode] += 1
        if result.mode in ANSWERED:
            answered += 1
            cited += any((Path(c.document).name, c.page) in wanted for c in result.citations)
    modes_out: Counter[str] = Counter()
    for case in oos:
        modes_out[service.answer(case["question"], k=k).mode] += 1
    declined = modes_out["refused"] + modes_out["escalated"]
    return {
        "answerable": {
            "cases": scored,
            "page_hit_at_1": top1 / scored,
            f"page_hit_at_{k}": topk / scored,
            "answered": answered / scored,
            "answered_citing_the_page": cited / scored,
            "modes": dict(modes_in),
        },
        "out_of_scope": {
            "cases": len(oos),
            "refused_or_escalated": declined / len(oos) if oos else 0.0,
            "modes": dict(modes_out),
        },
        "retrieval_misses": misses,
    }


def main() -> int:
    """Ingest, evaluate, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    shared = Path(args.shared)
    qa = read_cases(shared / "eval/dev/benefits_qa.jsonl")
    oos = read_cases(shared / "eval/dev/benefits_out_of_scope.jsonl")

    work = Path(tempfile.mkdtemp(prefix="freshkb-quality-"))
    use_throwaway_environment(work, work / "none.yaml")
    from freshkb.core.config import Settings
    from freshkb.flows.ingest import ingest_source
    from freshkb.serving.runtime import build_runtime
    from freshkb.store import server

    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_breaker_cooldown=3600)
    server.up(settings)
    try:
        report = ingest_source(
            source_config={
                "name": "benefits",
                "kind": "documents",
                "location": str(shared / "corpus/policies/benefits-pdfs"),
                "owner": "bench",
                "include": ["*.pdf"],
            }
        )
        if report.status != "completed":
            sys.exit(f"answer_quality: ingest failed: {report.error}")
        runtime = build_runtime(settings)
        for _ in range(settings.llm_breaker_failures):  # open: nothing waits on a dead endpoint
            runtime.answerer.breaker.record(False)
        try:
            result = evaluate(runtime.service, qa, oos, args.k)
        finally:
            runtime.close()
    finally:
        server.down(settings)
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    inside, outside = result["answerable"], result["out_of_scope"]
    print(f"answerable questions ({inside['cases']}, k={args.k})")
    for name, value in inside.items():
        if isinstance(value, float):
            print(f"  {name:<28}{value:>7.1%}")
    print(f"  modes                       {inside['modes']}")
    print(f"out-of-scope questions ({outside['cases']})")
    print(f"  {'refused_or_escalated':<28}{outside['refused_or_escalated']:>7.1%}")
    print(f"  modes                       {outside['modes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
