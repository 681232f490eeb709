"""The document screen's prefilter (screening/prefilter.py), measured: how much of the detector's
work it saves, and which attacks the screen stops flagging with it, at its threshold and others.

    .venv/bin/python bench/screen_prefilter.py [--shared DIR] [--json]

Rows: the screen without a prefilter (before), with the shipped one (its threshold a held-out
floor over the exemplars, set without dev data), and with thresholds set by the share of
benefits-PDF passages they pass, to show where flagged attacks start to be lost. Each row is the
guard itself (InjectionGuard.inspect_documents) with that prefilter; the detector's vectors are
memoised across rows, so each passage is embedded once. Columns: the share of passages the
detector judged (benefits chunks, the dev e-mails); documents flagged of the dev indirect attacks
hidden in e-mails on their own line, as bench/safety_eval.py builds them (halves A and B), and
of the same attacks blended into the middle of a sentence (no line break, first letter
lowercased); the attack exemplars; and policy paragraphs (clean text: lower is better).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embed_bench import load_chunks  # noqa: E402
from safety_eval import (  # noqa: E402
    POSITIONS,
    corpus_paragraphs,
    dev_dir,
    hide_instruction,
    read_jsonl,
)
from throwaway import use_throwaway_environment  # noqa: E402

SHARES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


class MemoEmbedder:
    """The detector's embedder, each text embedded once; counts the texts asked for."""

    def __init__(self, inner: object):
        self.inner = inner
        self.model_id = inner.model_id  # type: ignore[attr-defined]
        self.asked = 0
        self._vectors: dict[str, list[float]] = {}

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.asked += len(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if new:
            self._vectors.update(zip(new, self.inner.embed(new), strict=True))  # type: ignore[attr-defined]
        return [self._vectors[t] for t in texts]


def blend(context: str, instruction: str) -> str:
    """The instruction written into the sentence nearest the e-mail's middle: at a space, no
    break before or after, its first letter lowercased and its final stop dropped."""
    middle = len(context) // 2
    spaces = [i for i, ch in enumerate(context) if ch == " " and context[i - 1] not in ".!?\n"]
    cut = min(spaces, key=lambda i: abs(i - middle)) if spaces else len(context)
    words = instruction.rstrip(".!").strip()
    words = words[:1].lower() + words[1:]
    return f"{context[:cut]} {words} {context[cut:].lstrip()}"


def main() -> int:
    """Measure and print the table (or --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = dev_dir(args.shared)
    work = Path(tempfile.mkdtemp(prefix="freshkb-screen-prefilter-"))
    use_throwaway_environment(work)
    os.environ["FRESHKB_CACHE_DIR"] = str(work / "cache")

    from freshkb.core.ids import text_half
    from freshkb.core.text import word_count
    from freshkb.screening import InjectionGuard
    from freshkb.screening.detector import ExemplarDetector
    from freshkb.screening.exemplars import document_exemplars
    from freshkb.screening.guard import MIN_DOCUMENT_DETECTOR_WORDS, _document_passages, load_guard
    from freshkb.screening.prefilter import PENALTY, Prefilter

    by_category = json.loads((folder / "indirect_injection_attacks.json").read_text())
    attacks = [attack for items in by_category.values() for attack in items]
    emails = [r["context"] for r in read_jsonl(folder / "indirect_injection_email_contexts.jsonl")]
    on_own_line = [
        hide_instruction(emails[i % len(emails)], attack, POSITIONS[i % len(POSITIONS)])
        for i, attack in enumerate(attacks)
    ]
    blended = [blend(emails[i % len(emails)], attack) for i, attack in enumerate(attacks)]
    halves = np.array([text_half(attack) for attack in attacks])
    _, benefits = load_chunks(args.shared, "pdfs", None)
    sets = {
        "dev_attacks": on_own_line,
        "blended_attacks": blended,
        "attack_exemplars": list(document_exemplars().attacks),
        "emails": emails,
        "benefits": benefits,
        "paragraphs": corpus_paragraphs(args.shared),
    }

    guard = load_guard(cache_dir=work / "cache")
    shipped = guard.prefilter
    if shipped is None:
        sys.exit("screen_prefilter: the bundled model package is missing; run scripts/setup")
    memo = MemoEmbedder(guard.documents._embedder)
    detector = ExemplarDetector(memo, guard.documents.parameters)  # type: ignore[arg-type]

    def eligible(texts: list[str]) -> list[str]:
        return list(
            dict.fromkeys(
                p
                for text in texts
                for p in _document_passages(text)
                if word_count(p) >= MIN_DOCUMENT_DETECTOR_WORDS
            )
        )

    started = time.perf_counter()
    benefit_scores = shipped.scores(eligible(benefits))
    prefilter_seconds = time.perf_counter() - started
    thresholds: list[tuple[str, float | None]] = [
        ("none (before)", None),
        ("shipped (held-out floor)", shipped.parameters.threshold),
    ] + [
        (f"benefits pass {share:.0%}", float(np.quantile(benefit_scores, 1 - share)))
        for share in SHARES
    ]
    rows = []
    for label, threshold in thresholds:
        prefilter = None
        if threshold is not None:
            parameters = replace(shipped.parameters, threshold=threshold)
            prefilter = Prefilter(shipped.table, parameters, label)
        screen = InjectionGuard(guard.questions, detector, guard.rules, "bench", prefilter)
        row: dict[str, object] = {"prefilter": label, "threshold": threshold}
        for name, texts in sets.items():
            memo.asked = 0
            flagged = np.array([v.flagged for v in screen.inspect_documents(texts)])
            row[f"{name}_judged"] = memo.asked / max(1, len(eligible(texts)))
            row[f"{name}_flagged"] = float(flagged.mean())
            if name in ("dev_attacks", "blended_attacks"):
                row[f"{name}_flagged_A"] = float(flagged[halves == "A"].mean())
                row[f"{name}_flagged_B"] = float(flagged[halves == "B"].mean())
        rows.append(row)
    result = {
        "penalty": PENALTY,
        "benefits_passages": len(benefit_scores),
        "prefilter_seconds_benefits": prefilter_seconds,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{len(benefit_scores)} benefits passages, prefilter {prefilter_seconds:.2f} s "
        f"(penalty {PENALTY})"
    )
    print(
        f"{'prefilter':<26}{'benefits':>9}{'e-mails':>9}{'own line A / B':>22}"
        f"{'blended A / B':>22}{'exemplars':>10}{'paragraphs':>11}"
    )
    for row in rows:

        def flagged(name: str, row: dict[str, object] = row) -> str:
            return (
                f"{row[f'{name}_flagged']:.1%} ({row[f'{name}_flagged_A']:.1%} / "
                f"{row[f'{name}_flagged_B']:.1%})"
            )

        print(
            f"{row['prefilter']:<26}{row['benefits_judged']:>9.1%}{row['emails_judged']:>9.1%}"
            f"{flagged('dev_attacks'):>22}{flagged('blended_attacks'):>22}"
            f"{row['attack_exemplars_flagged']:>10.1%}{row['paragraphs_flagged']:>11.2%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
