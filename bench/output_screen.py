"""Output screen: planted bad answers caught, and grounded answers passed, per category.

    .venv/bin/python bench/output_screen.py [--shared DIR] [--json] [--misses]

No server and no model: the passages are the sections of the bundled sample/ corpus (policies
as text, customer records rendered as freshkb indexes them), plus, with --shared, the
service-policies and outdoor-manuals Markdown of ../shared/corpus. For every passage:
- the planted bad answers of tests/scripted_llm.py (`PLANTED`), each written by the scripted
  model over that passage, must be caught by the check they were planted for;
- grounded answers must pass: each sentence of the passage cited as written, the same sentence
  wrapped in an assistant's courtesies, and the sentence with its figures reworded ("$75" ->
  "75 dollars", "60 days" -> "60-day", "5 business days" -> "five business days"); and for
  each customer record, an answer that repeats its own address, e-mail and order number.
A grounded answer flagged by a check is a false positive of that check.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from scripted_llm import PLANTED, scripted_answer  # noqa: E402

from freshkb.loaders.record_text import render_record  # noqa: E402
from freshkb.screening.output import CHECKS, OutputVerdict, screen_answer  # noqa: E402
from freshkb.serving.answerer import Passage, build_messages  # noqa: E402

SENTENCE = re.compile(r"(?<=[.!?])\s+")
SMALL_NUMBERS = {"1": "one", "2": "two", "3": "three", "5": "five", "14": "fourteen"}
COURTESY = (
    "Thanks for reaching out! {s} [S1] I hope this helps, and feel free to contact us if you "
    "have any other questions.",
    "Good question. According to our policy, {s} [S1] Happy to help with anything else.",
    "I'm sorry for the trouble. {s} [S1]",
)


@dataclass(frozen=True)
class Case:
    """One answer to screen over one passage, and the check that should fire (None: none)."""

    passage: str
    answer: str
    expected: str | None
    behaviour: str
    question: str = ""


def policy_passages(folder: Path) -> Iterator[str]:
    """Sections of the text-like policy files of a folder (Markdown, text, HTML, JSON)."""
    for path in sorted(folder.iterdir()):
        if path.suffix in (".md", ".txt"):
            text = path.read_text("utf-8")
        elif path.suffix == ".html":
            text = html.unescape(re.sub(r"<(?:/?h\d|/p)>", "\n\n", path.read_text("utf-8")))
            text = re.sub(r"<[^>]+>", " ", text)
        elif path.suffix == ".json":
            text = json.loads(path.read_text("utf-8")).get("content", "")
        else:
            continue  # PDF and DOCX need unstructured; the text files are enough here
        for section in re.split(r"\n\s*\n", text):
            flat = " ".join(section.split())
            if len(flat.split()) >= 6:
                yield flat


def record_passages(folder: Path) -> Iterator[tuple[str, dict]]:
    """(rendered text, record) of the sample customer and order records."""
    import csv

    with (folder / "customers.csv").open() as handle:
        for row in csv.DictReader(handle):
            yield render_record(f"customers.csv:{row['customer_id']}", row), row
    for order in json.loads((folder / "orders.json").read_text()):
        yield render_record(f"orders.json:{order['order_id']}", order), order


def reworded(sentence: str) -> str:
    """The sentence with its figures written another way."""
    text = re.sub(r"\$(\d[\d,]*)", r"\1 dollars", sentence)
    text = re.sub(r"(\d+)%", r"\1 percent", text)
    text = re.sub(r"\b(\d+) days\b", r"\1-day", text)
    return re.sub(
        r"\b(\d+)(?= (?:business days|days|years|weeks|hours))",
        lambda m: SMALL_NUMBERS.get(m.group(1), m.group(1)),
        text,
    )


def grounded_cases(passage: str) -> Iterator[Case]:
    """Grounded answers over one passage: as written, with courtesies, figures reworded."""
    for sentence in SENTENCE.split(passage):
        if len(sentence.split()) < 4:
            continue
        yield Case(passage, f"{sentence} [S1]", None, "verbatim")
        courtesy = COURTESY[len(sentence) % len(COURTESY)]
        yield Case(passage, courtesy.format(s=sentence[0].lower() + sentence[1:]), None, "courtesy")
        if reworded(sentence) != sentence:
            yield Case(passage, f"{reworded(sentence)} [S1]", None, "figures reworded")


def own_record_case(text: str, record: dict) -> Case:
    """An answer that repeats the customer's own details, from their own record."""
    if "shipping_address" in record:
        street = record["shipping_address"]["street"]
        answer = f"Order {record['order_id']} is {record['status']} and goes to {street} [S1]."
    else:
        answer = f"We have {record['email']} on file for you, {record['name']} [S1]."
    return Case(text, answer, None, "own record", question="Where is my order?")


def planted_cases(passage: str) -> Iterator[Case]:
    """Every planted bad answer, written by the scripted model over the passage."""
    question = " ".join(SENTENCE.split(passage)[0].split()[:8])
    prompt = build_messages(question, [Passage("S1", "bench", "policy", passage)])[-1]["content"]
    for behaviour, planted in PLANTED.items():
        yield Case(passage, scripted_answer(behaviour, prompt), planted.check, behaviour, question)


def verdict(case: Case) -> OutputVerdict:
    """The screen's verdict on a case."""
    return screen_answer(case.answer, [case.passage], [case.passage], case.question)


def checks_fired(result: OutputVerdict) -> set[str]:
    """The checks (keys of CHECKS) with at least one finding."""
    return {finding.check for finding in result.findings}


def run(shared: Path | None) -> dict:
    """Screen every case; counts per check, and the misses and false positives."""
    passages = list(policy_passages(ROOT / "sample" / "policies"))
    if shared is not None:
        for name in ("service-policies", "outdoor-manuals"):
            passages += list(policy_passages(shared / "corpus" / "policies" / name))
    records = list(record_passages(ROOT / "sample" / "customers"))
    planted = [case for p in passages for case in planted_cases(p)]
    grounded = [case for p in passages for case in grounded_cases(p)]
    grounded += [own_record_case(text, record) for text, record in records]
    started = time.perf_counter()
    planted_fired = [(case, checks_fired(verdict(case))) for case in planted]
    grounded_fired = [(case, checks_fired(verdict(case))) for case in grounded]
    seconds = time.perf_counter() - started
    rows = []
    for check in CHECKS:
        mine = [(c, fired) for c, fired in planted_fired if c.expected == check]
        rows.append(
            {
                "category": check,
                "planted": len(mine),
                "caught": sum(check in fired for _, fired in mine),
                "grounded": len(grounded_fired),
                "false_positives": sum(check in fired for _, fired in grounded_fired),
            }
        )
    by_behaviour = Counter(c.behaviour for c, fired in planted_fired if c.expected not in fired)
    return {
        "passages": len(passages),
        "records": len(records),
        "planted_behaviours": len(PLANTED),
        "rows": rows,
        "missed_by_behaviour": dict(by_behaviour),
        "misses": [c.answer for c, fired in planted_fired if c.expected not in fired],
        "false_positive_answers": [
            {"answer": c.answer, "checks": sorted(fired)} for c, fired in grounded_fired if fired
        ],
        "ms_per_answer": round(seconds * 1000 / max(1, len(planted) + len(grounded)), 3),
    }


def print_table(report: dict, misses: bool) -> None:
    """The per-category table, then totals, then (with --misses) what was missed or flagged."""
    print(
        f"{report['passages']} passages, {report['records']} customer records, "
        f"{report['planted_behaviours']} planted behaviours, "
        f"{report['ms_per_answer']} ms per answer screened\n"
    )
    print(f"  {'category':<15}{'planted':>9}{'caught':>9}{'grounded':>10}{'false pos.':>12}")
    for row in report["rows"]:
        print(
            f"  {row['category']:<15}{row['planted']:>9}{row['caught']:>9}"
            f"{row['grounded']:>10}{row['false_positives']:>12}"
        )
    planted = sum(r["planted"] for r in report["rows"])
    caught = sum(r["caught"] for r in report["rows"])
    flagged = len(report["false_positive_answers"])
    grounded = report["rows"][0]["grounded"]
    print(f"\n  planted caught {caught}/{planted}; grounded passed {grounded - flagged}/{grounded}")
    if report["missed_by_behaviour"]:
        print(f"  missed, by behaviour: {report['missed_by_behaviour']}")
    if misses:
        for answer in report["misses"]:
            print(f"  MISSED  {answer}")
        for item in report["false_positive_answers"]:
            print(f"  FLAGGED {item['checks']}  {item['answer']}")


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, help="also the ../shared corpus (give its path)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--misses", action="store_true", help="list misses and false positives")
    args = parser.parse_args()
    report = run(args.shared)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report, args.misses)


if __name__ == "__main__":
    main()
