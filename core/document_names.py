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
longest span of it that some candidate's document uses, inside any of its own runs ("What
Northwind Health Plus" names "Northwind Health Plus"; "TrailMaster X4" is used inside
"TrailMaster X4 Tent"); a run of several words never names a single word of it. When some
candidate's document uses that name at least MIN_USES times, a candidate goes after the others
if its document
- uses the name at most twice, and at most a tenth as often (NAME_SHARE) as the document
  using it most, and
- is about something else of the same family: it uses another name of several words at least
  MIN_USES times that shares a word with the question's ("Northwind Standard" when the
  question names "Northwind Health Plus", "Alpine Explorer Tent" for "SkyView 2-Person Tent").

So a store-wide returns policy that names no product keeps its place for a question about one
tent, and so does a brochure comparing the two plans. A span that the candidates' own passages
also write in lower case ("Is the tent Waterproof?", "Radiation Therapy") is an ordinary phrase
of the knowledge base, not a name, and decides nothing; neither do months and days.

Measured (bench/results/retrieval-names.md): dev page hit@1 61.4 -> 63.4%, hit@5 82.2 ->
83.2%, neither half lower; on product questions over the outdoor manuals
(bench/named_retrieval.py), the product's manual first 89.2 -> 95.0% (a product of another
family, "TrailLite Daypack" against "TrailBlaze Hiking Pants", is not told apart).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache

KEPT = 500  # names stored per document at most, the most used first
MIN_USES = 3  # uses that make a document about a name; fewer, and it may be left behind
NAME_SHARE = 0.1  # ... when another candidate's document uses it ten times as often (< 0: off)
# A word of a name: a capital (any script) first, or within a name a digit-led word with a
# letter ("2-Person"); never the inside of a word ("iPhone" holds no name "Phone").
_WORD = r"(?:[^\W\d_][\w'\u2019-]*|\d[\w-]*[^\W\d_][\w'\u2019-]*)"
_RUN = re.compile(rf"(?<![\w\u2019-])(?<!\w'){_WORD}(?:[ \t]+{_WORD})*")
_POSSESSIVE = re.compile(r"['\u2019]s?$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# Where a clause starts: after a sentence end, a line break, or , ; : (serving/names.py too)
CLAUSE = re.compile(r"(?<=[.!?,;:])\s+|\n+")
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


_CALENDAR = frozenset(
    [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
)
_OPENER = re.compile(r"^[\s\-\u2013\u2014*\u2022>#\d.)(]*")  # bullets, dashes, numbering


def question_runs(question: str) -> list[tuple[list[str], bool]]:
    """The question's runs of capitalised words, as words, quotes and brackets stripped, each
    with whether its first word opens a clause (and may be capitalised only for that: "What
    Northwind..."); a lone clause opener ("What", "Hi, Can") is no run."""
    found: list[tuple[list[str], bool]] = []
    for clause in CLAUSE.split(question):
        clause = _OPENER.sub("", clause.strip(_EDGES)).strip(_EDGES)
        for run in runs(clause):
            words, opens = run.split(), clause.startswith(run)
            if len(words) > 1 or not opens:
                found.append((words, opens))
    return found


def _spans(words: list[str], opens: bool) -> Iterator[str]:
    """The word spans of a run that can be names, longest first: the name may be all of it or
    part of it ("What Northwind Health Plus", "TrailMaster X4 Tent Waterproof"). A span with the
    clause opener needs three letters besides it ("Can I" is no name); a run of several words
    without the opener names no single word of it ("Contoso Wellness Center" is not about
    "Contoso")."""
    rest = words[1:] if opens else words
    for size in range(len(words), 0, -1):
        if size == 1 and len(rest) > 1:
            return
        for start in range(len(words) - size + 1):
            span = words[start : start + size]
            own = span[1:] if opens and start == 0 else span
            if sum(c.isalpha() for word in own for c in word) >= 3:
                yield " ".join(span)


def has_names(question: str) -> bool:
    """Whether the question has a span that could name something (no lookups needed)."""
    return any(_nameable(s) for w, o in question_runs(question) for s in _spans(w, o))


def _nameable(span: str) -> bool:
    """Not an acronym, a contraction ("I'm"), a month or a day."""
    return (
        not span.isupper()
        and not (" " not in span and ("'" in span or "\u2019" in span))
        and span not in _CALENDAR
    )


def _document_runs(text: str) -> Iterator[str]:
    """The runs of a document's text. A run that opens a sentence counts without its first
    word, which may be capitalised only for opening it ("The TrailMaster X4 Tent is..."), and
    whole as well when it is longer; a lone opening word ("Where do I...") is no name."""
    for sentence in _SENTENCE.split(text):
        sentence = _OPENER.sub("", sentence)
        for i, run in enumerate(runs(sentence)):
            if i == 0 and sentence.startswith(run):
                if " " not in run:
                    continue
                yield run.split(None, 1)[1]
            yield run


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
    lowered = name.lower().split()
    # Each word is in the text for the phrase to be: a substring test first (most texts fail
    # it), the pattern only where it passes (this was ~4% of the answer service's Python time).
    held = [text for text in texts if all(word in text for word in lowered)]
    if not held:
        return False
    words = r"\s+".join(re.escape(w) for w in lowered)
    phrase = re.compile(rf"(?<![\w-]){words}(?![\w-])")
    return any(phrase.search(text) for text in held)


@lru_cache(maxsize=4096)
def _uses(encoded: str, span: str) -> tuple[int, int, bool]:
    """How often a document uses `span`, inside any of its runs ("TrailMaster X4" inside
    "TrailMaster X4 Tent"); at most how often, counting names left out of its list (the
    floor); and whether it is about something else of the same family: a name of several
    words, used MIN_USES times, sharing a word with `span` without holding it or being part of
    it ("Northwind Standard" against "Northwind Health Plus", "Alpine Explorer Tent" against
    "SkyView 2-Person Tent")."""
    table = decode(encoded)
    if table is None:
        return 0, 0, False
    names, floor = table
    padded, words = f" {span} ", set(span.split())
    used = sum(n for run, n in names.items() if padded in f" {run} ")
    other = any(
        n >= MIN_USES
        and " " in run
        and bool(words & set(run.split()))
        and padded not in f" {run} "
        and f" {run} " not in padded
        for run, n in names.items()
    )
    return used, used or floor, other


def mismatches(question: str, documents: Sequence[str], texts: Sequence[str] = ()) -> list[int]:
    """For each encoded document (one per candidate), how many of the question's names it
    leaves behind (see the module docstring). A run of the question names the longest span of
    it that some candidate's document uses (at least MIN_USES times, else the run names
    nothing) and that no passage of `texts` (the candidates') writes in lower case. Documents
    without names count 0: nothing is known of them."""
    misses = [0] * len(documents)
    for words, opens in question_runs(question):
        for span in _spans(words, opens):
            if not _nameable(span):
                continue
            found = [_uses(e, span) if e else None for e in documents]
            most = max((f[0] for f in found if f is not None), default=0)
            if most == 0:
                continue  # no candidate uses it: a shorter span may be the name
            if most >= MIN_USES and not _written_lower(span, texts):
                for i, f in enumerate(found):
                    if f is None or not f[2]:
                        continue
                    if f[1] < MIN_USES and f[1] <= NAME_SHARE * most:
                        misses[i] += 1
            break  # the longest span some candidate uses is the run's name, used enough or not
    return misses
