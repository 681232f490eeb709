"""The document screen's gate (screening/gate.py), measured: how much of the detector's work it
saves, and which flagged attacks a gate would lose at other thresholds.

    .venv/bin/python bench/screen_gate.py [--shared DIR] [--json]

The gate scores a passage by the mean of MiniLM's input word vectors through a regression fitted
on the document exemplars; only passages at or over its threshold, or matched by a rule, go to
the detector. The detector scores every passage once here, and each row replays the screen's
decision as if only the passages that gate passes had been scored.

Rows: no gate (the screen before), the shipped threshold (the lowest probability of a held-out
attack exemplar in 5-fold cross-validation: no dev data), and thresholds set by the share of
benefits-PDF passages they pass, to show where flagged attacks start to be lost. Columns: the
share of passages passed (benefits chunks, the dev e-mails), and the documents flagged of the
dev indirect attacks hidden in e-mails (halves A and B, as bench/safety_eval.py builds them),
and of the attack exemplars.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
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


def main() -> int:
    """Measure and print the table (or --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = dev_dir(args.shared)
    work = Path(tempfile.mkdtemp(prefix="freshkb-screen-gate-"))
    use_throwaway_environment(work)
    os.environ["FRESHKB_CACHE_DIR"] = str(work / "cache")

    from freshkb.core.ids import text_half
    from freshkb.screening.exemplars import document_exemplars
    from freshkb.screening.gate import GATE_PENALTY, probabilities
    from freshkb.screening.guard import MIN_DOCUMENT_DETECTOR_WORDS, _document_passages, load_guard
    from freshkb.screening.rules import match_rules
    from freshkb.screening.text import word_count

    by_category = json.loads((folder / "indirect_injection_attacks.json").read_text())
    attacks = [attack for items in by_category.values() for attack in items]
    emails = [r["context"] for r in read_jsonl(folder / "indirect_injection_email_contexts.jsonl")]
    poisoned = [
        hide_instruction(emails[i % len(emails)], attack, POSITIONS[i % len(POSITIONS)])
        for i, attack in enumerate(attacks)
    ]
    halves = np.array([text_half(attack) for attack in attacks])
    exemplars = document_exemplars()
    _, benefits = load_chunks(args.shared, "pdfs", None)
    sets = {
        "dev_attacks": poisoned,
        "attack_exemplars": list(exemplars.attacks),
        "emails": emails,
        "benefits": benefits,
        "paragraphs": corpus_paragraphs(args.shared),
    }

    guard = load_guard(cache_dir=work / "cache")
    gate = guard.gate
    if gate is None:
        sys.exit("screen_gate: the bundled model package is missing; run scripts/setup")
    passages = list(
        dict.fromkeys(
            p
            for texts in sets.values()
            for text in texts
            for p in _document_passages(text)
            if word_count(p) >= MIN_DOCUMENT_DETECTOR_WORDS
        )
    )
    started = time.perf_counter()
    attack_probabilities, margins = guard.documents.score(passages)
    detector_seconds = time.perf_counter() - started
    started = time.perf_counter()
    gated = probabilities(gate.parameters, gate.table.vectors(passages))
    gate_seconds = time.perf_counter() - started
    scores = {
        p: (float(a), float(b))
        for p, a, b in zip(passages, attack_probabilities, margins, strict=True)
    }
    gate_score = dict(zip(passages, gated.tolist(), strict=True))
    rules = guard.rules.document_rules

    def screened(texts: list[str], threshold: float) -> tuple[np.ndarray, float]:
        """Documents flagged with the gate at `threshold`, and the share of passages passed."""
        flagged, passed, total = [], 0, 0
        for text in texts:
            group = _document_passages(text)
            kept = {}
            for p in group:
                if p not in scores:
                    continue
                total += 1
                if gate_score[p] >= threshold or match_rules(p, rules):
                    kept[p] = scores[p]
                    passed += 1
            flagged.append(guard._document_verdict(group, kept).flagged)
        return np.array(flagged), passed / max(1, total)

    benefit_scores = np.array(
        [gate_score[p] for t in benefits for p in _document_passages(t) if p in gate_score]
    )
    thresholds = [("no gate", 0.0), ("shipped (held-out floor)", gate.parameters.threshold)] + [
        (f"benefits pass {share:.0%}", float(np.quantile(benefit_scores, 1 - share)))
        for share in SHARES
    ]
    rows = []
    for label, threshold in thresholds:
        row: dict[str, object] = {"gate": label, "threshold": threshold}
        for name, texts in sets.items():
            flagged, passed = screened(texts, threshold)
            row[f"{name}_passed"] = passed
            if name in ("dev_attacks", "attack_exemplars", "paragraphs"):
                row[f"{name}_flagged"] = float(flagged.mean())
            if name == "dev_attacks":
                row["dev_attacks_flagged_A"] = float(flagged[halves == "A"].mean())
                row["dev_attacks_flagged_B"] = float(flagged[halves == "B"].mean())
        rows.append(row)
    result = {
        "penalty": GATE_PENALTY,
        "passages": len(passages),
        "detector_seconds": detector_seconds,
        "gate_seconds": gate_seconds,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{len(passages)} passages: detector {detector_seconds:.1f} s, "
        f"gate {gate_seconds:.2f} s (penalty {GATE_PENALTY})"
    )
    print(
        f"{'gate':<24}{'thresh':>8}{'benefits':>10}{'e-mails':>9}{'dev flagged A / B':>22}"
        f"{'exemplars':>11}"
    )
    for row in rows:
        print(
            f"{row['gate']:<24}{row['threshold']:>8.4f}{row['benefits_passed']:>10.1%}"
            f"{row['emails_passed']:>9.1%}"
            f"{row['dev_attacks_flagged']:>9.1%} ({row['dev_attacks_flagged_A']:.1%} / "
            f"{row['dev_attacks_flagged_B']:.1%})"
            f"{row['attack_exemplars_flagged']:>11.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
