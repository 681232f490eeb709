"""The names a document uses, and whether a candidate's document uses the name a question asks
about.

A name here is a run of capitalised words ("Northwind Health Plus", "TrailMaster X4 Tent",
"SkyView 2-Person Tent"), taken whole: a document that says "Northwind Health Plus" four
hundred times and one that says "Northwind Health" two hundred times use different names. Two
documents of a knowledge base often hold near-identical passages (the return policy of two
tents, the prior-authorization pages of two plans); only the name tells them apart, and a
passage may not carry it.

At ingestion the first chunk of a policy document carries the names its document uses, with
their counts (`encode`). At search, each run of capitalised words in the question names the
longest span of it that some candidate's document uses at least MIN_USES times ("What
Northwind Health Plus" names "Northwind Health Plus"). A candidate whose document uses that
name fewer than MIN_USES times, while another candidate's document uses it ten times as often
(NAME_SHARE), goes after the others (`mismatches`, store/search.py `named_first`): its document
is not about that thing. A document that uses the name less often but more than twice (a
brochure comparing two plans) keeps its place. A span that the candidates' own passages also
write in lower case ("Is the tent Waterproof?", "Radiation Therapy") is an ordinary phrase of
the knowledge base, not a name, and decides nothing; neither do months and days.

Measured (bench/results/retrieval-names.md): dev page hit@1 61.4 -> 63.4%, hit@5 82.2 ->
83.2%, neither half lower; on product questions over the outdoor manuals
(bench/named_retrieval.py), the product's manual first 89.2 -> 100%.
"""

from __future__ import annotations

import calendar
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import cache, lru_cache

KEPT = 500  # names stored per document at most, the most used first
MIN_USES = 3  # uses that make a document about a name; fewer, and it may be left behind
NAME_SHARE = 0.1  # ... when another candidate's document uses the name ten times as often
# A word of a name: a capital (any script) first, or within a name a digit-led word with a
# letter ("2-Person"); never the inside of a word ("iPhone" holds no name "Phone").
_WORD = r"(?:[^\W\d_][\w'\u2019-]*|\d[\w-]*[^\W\d_][\w'\u2019-]*)"
_RUN = re.compile(rf"(?<![\w'\u2019-]){_WORD}(?:[ \t]+{_WORD})*")
_POSSESSIVE = re.compile(r"['\u2019]s?$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_CLAUSE = re.compile(r"(?<=[.!?,;:])\s+|\n+")
_EDGES = "\"'()[]{}<>*_\u201c\u201d\u2018\u2019"


def runs(text: str) -> Iterator[str]:
    """Every run of capitalised words in `text`, whole, a trailing possessive dropped."""
    for match in _RUN.finditer(text):
        words = match.group(0).split()
        # the pattern also lets lower-case words in; a name's words are capitalised or digit-led
        current: list[str] = []
        for word in [*words, ""]:
            if word and (word[0].isupper() or (current and word[0].isdigit())):
                current.append(word)
                continue
            while current and current[-1][0].isdigit():  # a name does not end on a number
                current.pop()
            if current:
                yield _POSSESSIVE.sub("", " ".join(current))
            current = []


@cache
def _calendar_words() -> frozenset[str]:
    return frozenset(calendar.month_name[1:]) | frozenset(calendar.day_name)


def question_runs(question: str) -> list[tuple[list[str], bool]]:
    """The question's runs of capitalised words, as words, quotes and brackets stripped, each
    with whether its first word opens a clause (and may be capitalised only for that: "What
    Northwind..."); a lone clause opener ("What", "Hi, Can") is no run."""
    found: list[tuple[list[str], bool]] = []
    for clause in _CLAUSE.split(question):
        clause = clause.strip(_EDGES)
        for run in runs(clause):
            words, opens = run.split(), clause.startswith(run)
            if len(words) > 1 or not opens:
                found.append((words, opens))
    return found


def _spans(words: list[str], opens: bool) -> Iterator[str]:
    """The word spans of a run that can be names, longest first: the name may be all of it or
    part of it ("What Northwind Health Plus", "TrailMaster X4 Tent Waterproof"). A span with the
    clause opener needs three letters besides it ("Can I" is no name)."""
    for size in range(len(words), 0, -1):
        for start in range(len(words) - size + 1):
            span = words[start : start + size]
            rest = span[1:] if opens and start == 0 else span
            if sum(c.isalpha() for word in rest for c in word) >= 3:
                yield " ".join(span)


def _nameable(span: str) -> bool:
    """Not an acronym, a contraction ("I'm"), a month or a day."""
    return (
        not span.isupper()
        and not (" " not in span and ("'" in span or "\u2019" in span))
        and span not in _calendar_words()
    )


def _document_runs(text: str) -> Iterator[str]:
    """The runs of a document's text; a run that opens a sentence also without its first word,
    which may be capitalised only for opening it ("The TrailMaster X4 Tent is...")."""
    for sentence in _SENTENCE.split(text):
        for i, run in enumerate(runs(sentence)):
            yield run
            if i == 0 and sentence.startswith(run) and " " in run:
                yield run.split(None, 1)[1]


def encode(texts: Iterable[str]) -> str:
    """The names a document uses (its KEPT most used) with their counts, as JSON; `floor`
    bounds the count of a name left out: 0, or the last count kept when there were more."""
    runs_ = (run for text in texts for run in _document_runs(text))
    counts = Counter(run for run in runs_ if sum(c.isalpha() for c in run) >= 3)
    common = counts.most_common()
    kept = common[:KEPT]
    floor = kept[-1][1] if len(common) > KEPT else 0
    return json.dumps({"names": dict(kept), "floor": floor}, separators=(",", ":"))


@lru_cache(maxsize=256)  # the candidates come from the same documents again and again
def decode(encoded: str) -> tuple[dict[str, int], int] | None:
    """The names and floor of `encode`, or None when there are none to read (a document
    written before names were stored, or a customer record)."""
    if not encoded:
        return None
    try:
        data = json.loads(encoded)
        return {str(k): int(v) for k, v in data["names"].items()}, int(data["floor"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _written_lower(name: str, texts: Sequence[str]) -> bool:
    """Whether some text holds the name in lower case, as a phrase of its own."""
    phrase = re.compile(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])")
    return any(phrase.search(text) for text in texts)


def mismatches(question: str, documents: Sequence[str], texts: Sequence[str] = ()) -> list[int]:
    """For each encoded document (one per candidate), how many of the question's names it
    leaves behind (see the module docstring). A run of the question names the longest span of
    it that some candidate's document uses at least MIN_USES times and that no passage of
    `texts` (the candidates') writes in lower case. Documents without names count 0: nothing
    is known of them."""
    misses = [0] * len(documents)
    question_words = question_runs(question)
    tables = [decode(encoded) for encoded in documents] if question_words else []
    for words, opens in question_words:
        for span in _spans(words, opens):
            uses = [None if t is None else t[0].get(span) for t in tables]
            most = max((n for n in uses if n is not None), default=0)
            if most < MIN_USES or not _nameable(span) or _written_lower(span, texts):
                continue
            bar = min(MIN_USES, NAME_SHARE * most)
            for i, (table, used) in enumerate(zip(tables, uses, strict=True)):
                at_most = None if table is None else (table[1] if used is None else used)
                if at_most is not None and at_most < bar:  # left out: at most the floor
                    misses[i] += 1
            break
    return misses
