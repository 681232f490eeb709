"""Hallucination signals: what suggests an answer says more than its sources do.

Pure functions over what the answer path already has, one name per signal (the answer log and
the metrics keep the names):

- `no_citations`: the model answered without citing any passage it was given (freshkb may
  still attribute its sentences; the model itself did not ground them).
- `unsupported_sentence`: a sentence of the model's answer cites no passage, or none of its
  cited passages holds most of its content words (serving/grounding.py's measure).
- `contradicts_sources`: the answer states a figure or a commitment its cited passages lack
  (the output screen's `promise` findings), or a clause says the opposite of the cited clause
  it matches: the same content words, one of them negated ("can be returned" against "cannot
  be returned").
- `low_retrieval_confidence`: the best passage's relevance (cosine with the question) was below
  `answer_min_relevance` + LOW_CONFIDENCE_MARGIN, or the passages were judged not to answer the
  question (serving/answerability.py): the answer was withheld for weak retrieval, or given on
  retrieval barely above the bar.

A signal is evidence for review and for the hallucination rate, not a verdict: the service's
own checks still decide what a customer sees.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from functools import cache

from freshkb.screening.output import OutputVerdict, load_output_screen
from freshkb.serving.answerer import CITATION
from freshkb.serving.grounding import SENTENCE, SUPPORT, WORD, content_words, support

NO_CITATIONS = "no_citations"
UNSUPPORTED = "unsupported_sentence"
CONTRADICTION = "contradicts_sources"
LOW_CONFIDENCE = "low_retrieval_confidence"
SIGNALS = (NO_CITATIONS, UNSUPPORTED, CONTRADICTION, LOW_CONFIDENCE)

# Within this of the relevance bar, retrieval is too weak to trust an answer without a look.
LOW_CONFIDENCE_MARGIN = 0.05
_CLAUSE = re.compile(r"[,;:]\s+|\s+(?:but|however|although|whereas)\s+")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")
_MIN_CLAUSE_WORDS = 3  # fewer content words cannot tell which clause a clause matches


@cache
def _negations() -> frozenset[str]:
    """The output screen's negation words (screening/data/output.yaml)."""
    return frozenset(load_output_screen().rules.negations)


def uncited(cited: Iterable[str], given: Collection[str]) -> bool:
    """True when the model cited none of the passage labels it was given."""
    return not any(label in given for label in cited)


def unsupported_sentences(text: str, passages: Mapping[str, str]) -> list[str]:
    """The sentences of text that cite no given passage, or that no cited passage supports."""
    found = []
    for sentence in _sentences(text):
        cited = [passages[label] for label in CITATION.findall(sentence) if label in passages]
        if not cited or max(support(sentence, passage) for passage in cited) < SUPPORT:
            found.append(sentence.strip())
    return found


def negated_clauses(text: str, passages: Mapping[str, str]) -> list[str]:
    """Clauses of text whose best-matching cited clause has the opposite polarity."""
    found = []
    for sentence in _sentences(text):
        cited = [passages[label] for label in CITATION.findall(sentence) if label in passages]
        candidates = [clause for passage in cited for clause in _clauses(passage)]
        for clause in _clauses(sentence):
            if len(content_words(clause)) < _MIN_CLAUSE_WORDS or not candidates:
                continue
            share, match = max((support(clause, c), c) for c in candidates)
            if share >= SUPPORT and _negated(clause) != _negated(match):
                found.append(clause.strip())
    return found


def low_confidence(best_relevance: float | None, min_relevance: float) -> bool:
    """True when retrieval ran and its best passage was near or below the relevance bar."""
    return best_relevance is not None and best_relevance < min_relevance + LOW_CONFIDENCE_MARGIN


def draft_signals(
    cited: Iterable[str], text: str, passages: Mapping[str, str], verdict: OutputVerdict
) -> list[str]:
    """The signals of a model's answer: `cited` as the model wrote them, `text` with citations
    checked, `passages` by label, and the output screen's verdict on `text`."""
    signals = []
    if uncited(cited, passages):
        signals.append(NO_CITATIONS)
    if unsupported_sentences(text, passages):
        signals.append(UNSUPPORTED)
    promises = any(finding.check == "promise" for finding in verdict.findings)
    if promises or negated_clauses(text, passages):
        signals.append(CONTRADICTION)
    return signals


def retrieval_signals(
    best_relevance: float | None, min_relevance: float, answerable: bool = True
) -> list[str]:
    """The signals of retrieval alone (`answerable`: the answerability judgement's verdict)."""
    weak = low_confidence(best_relevance, min_relevance) or not answerable
    return [LOW_CONFIDENCE] if weak else []


def _sentences(text: str) -> list[str]:
    """The sentences that state something (three words or more)."""
    return [s for s in SENTENCE.split(text) if len(WORD.findall(s.lower())) >= 3]


def _clauses(text: str) -> list[str]:
    """Text cut at sentence ends, commas, semicolons and contrasting conjunctions."""
    return [c for s in SENTENCE.split(text) for c in _CLAUSE.split(s) if c.strip()]


def _negated(clause: str) -> bool:
    """True when the clause carries a negation word ("not", "never", "can't", ...)."""
    words = _TOKEN.findall(clause.lower().replace("\u2019", "'"))
    return any(word in _negations() or word.endswith("n't") for word in words)
