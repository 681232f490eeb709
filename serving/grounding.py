"""Whether a model's answer rests on what was retrieved: citations, word support, no leaks.

A sentence is supported by a passage when most of its content words appear in it. Uncited but
supported sentences get their citation added; an answer with any unsupported, uncited or
off-question sentence, or an e-mail address no passage contains, is not served as written.
"""

from __future__ import annotations

import re
from importlib.resources import files

from freshkb.serving.answerer import CITATION, Passage
from freshkb.store.weaviate_store import SearchHit

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
WORD = re.compile(r"[a-z0-9$%]+")
# Sentence ends: after . ! ? unless a citation follows ("... receipt. [S1]" is one sentence),
# and after a citation.
SENTENCE = re.compile(r"(?<=[.!?])\s+(?!\[S\d+\])|(?<=\[S\d\])\s+|(?<=\[S\d\d\])\s+")


def word_list(name: str) -> frozenset[str]:
    """The words of serving/data/`name`, whitespace-separated; lines starting with # are notes."""
    text = files("freshkb.serving").joinpath(f"data/{name}").read_text("utf-8")
    return frozenset(
        w for line in text.splitlines() if not line.startswith("#") for w in line.split()
    )


# Words that say nothing about what a sentence claims, one a line.
STOPWORDS = word_list("stopwords.txt")
SUPPORT = 0.6  # share of a sentence's content words that must appear in the passage


def content_words(text: str) -> list[str]:
    """The words of text that carry its claim: no citations, no stopwords."""
    return [w for w in WORD.findall(CITATION.sub("", text).lower()) if w not in STOPWORDS]


def support(sentence: str, passage: str) -> float:
    """Share of a sentence's content words that the passage contains."""
    words = content_words(sentence)
    if not words:
        return 1.0
    vocabulary = set(WORD.findall(passage.lower()))
    return sum(word in vocabulary for word in words) / len(words)


def attribute_citations(text: str, passages: list[Passage]) -> tuple[str, int]:
    """Cite each uncited sentence with the passage that contains most of its words.

    Small models often answer correctly but forget the [S1] markers. A sentence whose content
    words mostly appear in one passage is supported by it and gets that citation; a sentence
    no passage supports stays uncited, and the answer is then refused as having an uncited
    claim. Returns the new text and how many sentences were attributed.
    """
    vocabularies = {p.label: set(WORD.findall(p.text.lower())) for p in passages}
    attributed = 0
    paragraphs = []
    for paragraph in re.split(r"(\n\s*\n)", text):
        rebuilt = []
        for sentence in SENTENCE.split(paragraph):
            label = _best_supporting(sentence, vocabularies)
            if label:
                sentence = f"{sentence.rstrip()} [{label}]"
                attributed += 1
            rebuilt.append(sentence)
        paragraphs.append(" ".join(rebuilt))
    return "".join(paragraphs), attributed


def _best_supporting(sentence: str, vocabularies: dict[str, set[str]]) -> str | None:
    """The label to cite an uncited claim with, or None (cited, too short, or unsupported)."""
    words = [w for w in WORD.findall(sentence.lower()) if w not in STOPWORDS]
    if CITATION.search(sentence) or len(words) < 3:
        return None
    label, share = max(
        (
            (label, sum(w in vocab for w in words) / len(words))
            for label, vocab in vocabularies.items()
        ),
        key=lambda pair: pair[1],
        default=("", 0.0),
    )
    return label if share >= SUPPORT else None


def strip_citations(text: str, labels: set[str]) -> str:
    """Text without the citations of `labels`, spaces tidied."""
    for label in labels:
        text = text.replace(f"[{label}]", "")
    return re.sub(r"[ \t]+", " ", text).strip()


def unsupported_or_leaking(
    text: str,
    passages: dict[str, Passage],
    hits: dict[str, SearchHit],
    min_relevance: float,
    customer_id: str | None,
) -> str | None:
    """Why a model answer may not be served in normal mode, or None.

    Every sentence must cite a retrieved passage that is relevant to the question and that
    contains most of the sentence's content words; no e-mail address may appear that the
    retrieved passages do not contain (another customer's data cannot have come from this
    customer's context).
    """
    sentences = [s for s in SENTENCE.split(text) if len(WORD.findall(s.lower())) >= 3]
    if not sentences:
        return "empty answer"
    for sentence in sentences:
        problem = _ungrounded(sentence, passages, hits, min_relevance)
        if problem:
            return f"the sentence {sentence.strip()[:80]!r} {problem}"
    return _leak(text, hits, customer_id)


def _ungrounded(
    sentence: str, passages: dict[str, Passage], hits: dict[str, SearchHit], min_relevance: float
) -> str | None:
    labels = [label for label in CITATION.findall(sentence) if label in passages]
    if not labels:
        return "cites no retrieved passage"
    if all((hits[label].relevance or 0.0) < min_relevance for label in labels):
        return "rests on passages off the question"
    if max(support(sentence, passages[label].text) for label in labels) < SUPPORT:
        return "is not supported by what it cites"
    return None


def _leak(text: str, hits: dict[str, SearchHit], customer_id: str | None) -> str | None:
    """Why the answer could carry another customer's data, or None."""
    context = " ".join(hit.text for hit in hits.values())
    for address in EMAIL.findall(text):
        if address not in context:
            return f"it mentions {address!r}, which no retrieved passage contains"
    others = {
        hit.customer_id
        for hit in hits.values()
        if hit.customer_id and hit.customer_id != customer_id
    }
    if others:
        return "retrieved records of another customer"
    return None
