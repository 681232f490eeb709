"""What a question names, and which of those names the knowledge base never mentions.

A name is a capitalised word that is not the first of its clause: a plan, a product, a place, a
person ("the Zanzibar outlet", "my TrailMaster tent"). A question about something that no chunk
of the fresh sources and none of the asking customer's own records mentions cannot be answered
from them, however close the retrieved passages are in meaning (serving/answerability.py
declines it). Left out, so that ordinary words are not taken for names: the first word of each
sentence, line and clause (after , ; :), all-capital words (acronyms are often spelled out in
the documents), words with digits, lines of three words or fewer in a question of several
lines (greetings, signatures), stopwords (the project's, and Weaviate's English preset, which
keyword search drops), question words, and day, month and language names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

from freshkb.core.document_names import CLAUSE
from freshkb.core.errors import TransientError
from freshkb.serving.answerability import question_words
from freshkb.serving.grounding import word_list
from freshkb.store.protocol import IndexReader

MAX_NAMES = 4  # names looked up per question, at most
SHORT_LINE = 3  # words: a line this short is a greeting or a signature
_EDGES = "\"'()[]{}<>.,;:!?\u201c\u201d\u2018\u2019\u2014\u2013*_"
_POSSESSIVE = re.compile(r"['\u2019]s$")


@cache
def _ordinary() -> frozenset[str]:
    """Question words, and serving/data/not_names.txt (search stopwords, days, months...)."""
    return question_words() | word_list("not_names.txt")


def _as_name(word: str) -> str | None:
    """The word as a name, or None: capitalised, letters (and ' or -) only, not all capitals."""
    word = _POSSESSIVE.sub("", word.strip(_EDGES))
    letters = word.replace("-", "").replace("'", "").replace("\u2019", "")
    if len(letters) < 3 or not letters.isalpha() or not word[0].isupper() or word.isupper():
        return None
    return None if word.lower() in _ordinary() else word


def names(question: str) -> list[str]:
    """The question's names, in order, each once (at most MAX_NAMES). In a question of several
    lines, lines of at most SHORT_LINE words are left out: greetings and sign-offs ("Kind
    regards,", "Jane Doe")."""
    found: list[str] = []
    lines = question.splitlines()
    if len(lines) > 1:
        lines = [line for line in lines if len(line.split()) > SHORT_LINE]
    for clause in CLAUSE.split("\n".join(lines)):
        for word in clause.split()[1:]:
            name = _as_name(word)
            if name is not None and name not in found:
                found.append(name)
    return found[:MAX_NAMES]


def unknown_names(
    store: IndexReader, question: str, customer_id: str | None, sources: Sequence[str] | None
) -> tuple[str, ...]:
    """The question's names that no chunk of `sources` and none of the customer's records
    contains; none when Weaviate cannot tell (the other checks still decide)."""
    asked = names(question)
    if not asked:
        return ()
    try:
        return tuple(store.unknown_terms(asked, customer_id=customer_id, sources=sources))
    except TransientError:
        return ()
