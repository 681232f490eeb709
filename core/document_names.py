"""The names a document uses, and whether it uses the name a question asks about.

A name here is a run of capitalised words ("Northwind Health Plus", "TrailMaster X4 Tent"),
taken whole: a document that says "Northwind Health Plus" four hundred times and one that says
"Northwind Health" two hundred times use different names. Two documents of a knowledge base
often hold near-identical passages (the return policy of two tents, the prior-authorization
pages of two plans); only the name tells them apart, and a passage may not carry it.

At ingestion the first chunk of a policy document carries its document's names with their
counts (`encode`); at search, a candidate whose document uses a name of the question under
NAME_SHARE as often as the candidate document using it most is put after the others
(`mismatches`, store/search.py). Measured (bench/results/retrieval-names.md): dev page hit@1
61.4 -> 63.4%, hit@5 82.2 -> 83.2%, neither half lower; on templated product questions over the
outdoor manuals (bench/named_retrieval.py), the right manual first 89.2 -> 100%.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

KEPT = 2000  # names stored per document at most, the most used first
MIN_USES = 3  # uses by some candidate document before a name decides anything
NAME_SHARE = 0.1  # a document using a name under this share of the most is not about it
_RUN = re.compile(r"[A-Z][\w'\u2019-]*(?:[ \t]+[A-Z][\w'\u2019-]*)*")
_POSSESSIVE = re.compile(r"['\u2019]s$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def runs(text: str) -> list[str]:
    """Every run of capitalised words in `text`, whole, a trailing possessive dropped."""
    return [_POSSESSIVE.sub("", match.group(0)) for match in _RUN.finditer(text)]


def _document_runs(text: str) -> Iterable[str]:
    """The runs of a document's text; a run that opens a sentence also without its first word,
    which may be capitalised only for opening it ("The TrailMaster X4 Tent is...")."""
    for sentence in _SENTENCE.split(text):
        for i, run in enumerate(runs(sentence)):
            yield run
            if i == 0 and sentence.startswith(run) and " " in run:
                yield run.split(None, 1)[1]


def question_names(question: str) -> list[str]:
    """The runs of a question that can be names: not the first word of a sentence or line
    (capitalised as any opener), not an acronym, at least three letters; each once."""
    found: list[str] = []
    for sentence in _SENTENCE.split(question):
        words = sentence.split(maxsplit=1)
        for run in runs(words[1] if len(words) > 1 else ""):
            if len(run) >= 3 and not run.isupper() and run not in found:
                found.append(run)
    return found


def encode(texts: Iterable[str]) -> str:
    """A document's names (its KEPT most used) with their counts, as JSON; `floor` bounds the
    count of any name left out: 0 unless there were more than KEPT."""
    counts = Counter(run for text in texts for run in _document_runs(text) if len(run) >= 3)
    common = counts.most_common()
    kept = common[:KEPT]
    floor = kept[-1][1] if len(common) > KEPT else 0
    return json.dumps({"names": dict(kept), "floor": floor}, separators=(",", ":"))


@lru_cache(maxsize=1024)  # the chunks of one document carry the same names
def decode(encoded: str) -> tuple[dict[str, int], int] | None:
    """The names and floor of `encode`, or None when there are none to read (a chunk written
    before names were stored, or a customer record)."""
    if not encoded:
        return None
    try:
        data = json.loads(encoded)
        return {str(k): int(v) for k, v in data["names"].items()}, int(data["floor"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def mismatches(question: str, documents: Sequence[str]) -> list[int]:
    """For each encoded document (one per candidate), how many of the question's names it uses
    under NAME_SHARE as often as the candidate using it most. Documents without names count 0:
    nothing is known of them."""
    misses = [0] * len(documents)
    names = question_names(question)
    if not names:
        return misses
    tables = [decode(encoded) for encoded in documents]
    for name in names:
        uses = [None if t is None else t[0].get(name) for t in tables]
        most = max((n for n in uses if n is not None), default=0)
        if most < MIN_USES:
            continue
        for i, (table, used) in enumerate(zip(tables, uses, strict=True)):
            if table is None:
                continue
            at_most = table[1] if used is None else used  # left out: at most the floor
            if at_most < NAME_SHARE * most:
                misses[i] += 1
    return misses
