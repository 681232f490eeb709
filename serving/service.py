"""The answer path: safety -> freshness -> retrieval -> answer -> checks, one mode per answer.

Modes:
- normal: the LLM answered from fresh sources only, every paragraph cites a retrieved passage.
- degraded: something was left out or unavailable and the answer says so: stale or failed
  sources left out, stale customer records left out, or the LLM down (an extractive answer
  quoting the best passages, with citations).
- escalated: the fresh knowledge base cannot answer (low retrieval confidence, the model says
  the passages are insufficient, or every source is stale); the question goes to a human.
- refused: the question is a prompt-injection attempt, or plainly outside the knowledge base.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from freshkb.embeddings.embedder import Embedder
from freshkb.core.config import Settings, format_duration
from freshkb.core.records import SourceKind
from freshkb.serving.answerer import CITATION, Answerer, LLMUnavailable, Passage
from freshkb.serving.escalations import EscalationStore
from freshkb.serving.safety import inspect_document, screen_question
from freshkb.store.ledger import Ledger, SourceFreshness
from freshkb.store.weaviate_store import SearchHit, WeaviateStore

REFUSAL_OFF_TOPIC = (
    "I can only help with questions about our policies, products and your own account, and "
    "I could not find anything in our knowledge base about this."
)
REFUSAL_INJECTION = (
    "I can't act on instructions to change how I work. Please ask your question about our "
    "policies or your account, and I'll gladly help."
)
ESCALATION_MESSAGE = (
    "I couldn't find a reliable answer in our current knowledge base, so I've passed your "
    "question to a colleague, who will get back to you."
)
EXTRACTIVE_LEAD = "Our assistant is unavailable right now; here is what our documentation says:"
QUOTED_LEAD = "Here is what our documentation says:"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


@dataclass(frozen=True)
class Citation:
    """Where a cited passage came from."""

    chunk_id: str
    label: str
    source: str
    document: str
    title: str
    page: int | None
    ingested_at: str | None
    flow_run_id: str | None


@dataclass(frozen=True)
class StaleSource:
    """A source whose data was left out of the answer, and why."""

    name: str
    kind: str
    state: str
    age: str | None
    sla: str | None
    reasons: list[str]


@dataclass
class AnswerResult:
    """Everything `POST /v1/answer` returns."""

    answer_id: str
    answer: str
    mode: str
    citations: list[Citation] = field(default_factory=list)
    stale_sources: list[StaleSource] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "completion": 0})
    escalation_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return asdict(self)


class AnswerService:
    """Answers questions from the fresh part of the index; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: WeaviateStore,
        embedder: Embedder,
        ledger: Ledger,
        escalations: EscalationStore,
        answerer: Answerer,
    ):
        self.settings = settings
        self.store = store  # one long-lived client: the v4 client is safe to share
        self.embedder = embedder
        self.ledger = ledger
        self.escalations = escalations
        self.answerer = answerer

    # -- retrieval ----------------------------------------------------------------------

    def freshness(self, customer_id: str | None) -> tuple[list[str], list[SourceFreshness]]:
        """(fresh source names to search, sources left out) for this request."""
        fresh: list[str] = []
        left_out: list[SourceFreshness] = []
        for state in self.ledger.states():
            if state.kind == SourceKind.CUSTOMERS.value and customer_id is None:
                continue
            if state.usable:
                fresh.append(state.name)
            else:
                left_out.append(state)
        return fresh, left_out

    def search(
        self, question: str, customer_id: str | None = None, k: int = 5
    ) -> tuple[list[SearchHit], list[SourceFreshness]]:
        """Hybrid search over the fresh sources only; also returns the sources left out."""
        fresh, left_out = self.freshness(customer_id)
        vector = self.embedder.embed([question])[0]
        hits = self.store.search(question, vector, k=k, customer_id=customer_id, sources=fresh)
        return hits, left_out

    # -- answering ----------------------------------------------------------------------

    def answer(self, question: str, customer_id: str | None = None, k: int = 5) -> AnswerResult:
        """One answer, in one of the four modes, with citations and reasons."""
        result = AnswerResult(answer_id=str(uuid.uuid4()), answer="", mode="normal")
        timings = result.timings_ms

        with _timed(timings, "safety"):
            verdict = screen_question(question)
        if verdict.blocked:
            result.mode, result.answer = "refused", REFUSAL_INJECTION
            result.reasons.append(
                "question blocked as prompt injection: " + "; ".join(verdict.reasons)
            )
            return result

        with _timed(timings, "retrieve"):
            hits, left_out = self.search(question, customer_id, k)
        result.stale_sources = [_stale(state) for state in left_out]
        if left_out:
            result.reasons.append(
                "left out stale or failed sources: "
                + ", ".join(f"{s.name} ({s.state.value})" for s in left_out)
            )
        customer_left_out = [s for s in left_out if s.kind == SourceKind.CUSTOMERS.value]
        if customer_id and customer_left_out:
            result.reasons.append(
                "customer records are not fresh, so this answer avoids account-specific facts"
            )

        with _timed(timings, "screen"):
            usable: list[SearchHit] = []
            for hit in hits:
                # Flagged at ingestion; checked again here for objects written before the flag
                # existed, and because the detector may have improved since.
                reason = hit.injection_reason or None
                if reason is None:
                    inspected = inspect_document(hit.text)
                    reason = "; ".join(inspected.reasons) if inspected.flagged else None
                if reason:
                    result.reasons.append(
                        f"left out passage {hit.uuid} of {hit.source}/{hit.document_key}: it "
                        f"carries instructions aimed at an assistant ({reason})"
                    )
                else:
                    usable.append(hit)

        best = max((hit.relevance or 0.0 for hit in usable), default=0.0)
        threshold = self.settings.answer_min_relevance
        if not usable or best < threshold:
            if not usable and left_out and not hits:
                why = "no fresh source holds anything relevant (stale sources were left out)"
            else:
                why = f"best passage relevance {best:.2f} is below {threshold:.2f}"
            if best < threshold * 0.6 and not left_out:
                result.mode, result.answer = "refused", REFUSAL_OFF_TOPIC
                result.reasons.append(f"outside the knowledge base: {why}")
                return result
            return self._escalate(result, question, customer_id, usable, why)

        passages = [
            Passage(f"S{n}", hit.uuid, hit.title, hit.text) for n, hit in enumerate(usable, 1)
        ]
        by_label = dict(zip((p.label for p in passages), usable, strict=True))
        note = ""
        if customer_id and customer_left_out:
            note = "Do not state facts about the customer's own account or orders."
        try:
            with _timed(timings, "llm"):
                completion = self.answerer.answer(question, passages, note)
        except LLMUnavailable as exc:
            result.reasons.append(f"LLM unavailable, answered by quoting: {exc}")
            return self._extractive(result, passages, by_label, EXTRACTIVE_LEAD)
        result.tokens = {
            "prompt": completion.prompt_tokens,
            "completion": completion.completion_tokens,
        }
        if completion.insufficient:
            return self._escalate(
                result, question, customer_id, usable, "the model found the passages insufficient"
            )
        invalid = [label for label in completion.cited if label not in by_label]
        text = _strip_citations(completion.text, set(invalid))
        if invalid:
            result.reasons.append(f"dropped invalid citations: {', '.join(invalid)}")
        relevant = [p for p in passages if (by_label[p.label].relevance or 0.0) >= threshold]
        text, attributed = attribute_citations(text, relevant)
        if attributed:
            result.reasons.append(
                f"{attributed} uncited sentence(s) attributed to the passage they quote"
            )
        valid = list(dict.fromkeys(CITATION.findall(text)))
        problem = _unsupported_or_leaking(
            text, {p.label: p for p in passages}, by_label, threshold, customer_id
        )
        if problem:
            result.reasons.append(f"model answer rejected: {problem}; answered by quoting")
            return self._extractive(result, passages, by_label, QUOTED_LEAD)
        result.answer = text
        result.citations = [_citation(label, by_label[label]) for label in valid]
        if left_out:
            result.mode = "degraded"
            result.answer += "\n\n" + _stale_note(left_out)
        return result

    def _extractive(
        self,
        result: AnswerResult,
        passages: list[Passage],
        by_label: dict[str, SearchHit],
        lead: str,
    ) -> AnswerResult:
        """Degraded answer without the LLM's words: the best passages, quoted, with citations."""
        best = by_label[passages[0].label].relevance or 0.0
        # Quote the best passage, and the second only if it is nearly as relevant.
        quoted = [
            p
            for p in passages[:2]
            if (by_label[p.label].relevance or 0.0) >= best - 0.1 or p is passages[0]
        ]
        lines = [lead]
        for passage in quoted:
            excerpt = " ".join(passage.text.split())
            if len(excerpt) > 600:
                excerpt = excerpt[:600].rsplit(" ", 1)[0] + " ..."
            lines.append(f'"{excerpt}" [{passage.label}]')
        result.mode = "degraded"
        result.answer = "\n\n".join(lines)
        if result.stale_sources:
            result.answer += "\n\n" + _stale_note_from(result.stale_sources)
        result.citations = [_citation(p.label, by_label[p.label]) for p in quoted]
        return result

    def _escalate(
        self,
        result: AnswerResult,
        question: str,
        customer_id: str | None,
        hits: list[SearchHit],
        why: str,
    ) -> AnswerResult:
        result.mode = "escalated"
        result.reasons.append(why)
        result.answer = ESCALATION_MESSAGE
        if result.stale_sources:
            result.answer += " " + _stale_note_from(result.stale_sources)
        context = [
            {
                "chunk_id": hit.uuid,
                "source": hit.source,
                "document": hit.document_key,
                "relevance": hit.relevance,
                "text": hit.text[:2000],
            }
            for hit in hits
        ]
        escalation = self.escalations.escalate(
            question, customer_id, result.mode, result.reasons, context
        )
        result.escalation_id = escalation.id
        return result


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round((time.perf_counter() - started) * 1000, 1)


def _stale(state: SourceFreshness) -> StaleSource:
    return StaleSource(
        name=state.name,
        kind=state.kind,
        state=state.state.value,
        age=None if state.age_seconds is None else format_duration(state.age_seconds),
        sla=None if state.sla_seconds is None else format_duration(state.sla_seconds),
        reasons=list(state.reasons),
    )


def _stale_note(left_out: list[SourceFreshness]) -> str:
    return _stale_note_from([_stale(state) for state in left_out])


def _stale_note_from(stale: list[StaleSource]) -> str:
    parts = [
        f"{s.name} ({s.state}" + (f", last synced {s.age} ago, SLA {s.sla}" if s.age else "") + ")"
        for s in stale
    ]
    return "Note: these sources are out of date and were not used: " + "; ".join(parts) + "."


def _citation(label: str, hit: SearchHit) -> Citation:
    return Citation(
        chunk_id=hit.uuid,
        label=label,
        source=hit.source,
        document=hit.document_key,
        title=hit.title,
        page=hit.page,
        ingested_at=hit.ingested_at.isoformat() if hit.ingested_at else None,
        flow_run_id=hit.flow_run_id,
    )


WORD = re.compile(r"[a-z0-9$%]+")
# Sentence ends: after . ! ? unless a citation follows ("... receipt. [S1]" is one sentence),
# and after a citation.
SENTENCE = re.compile(r"(?<=[.!?])\s+(?!\[S\d+\])|(?<=\[S\d\])\s+|(?<=\[S\d\d\])\s+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "our",
        "that",
        "the",
        "their",
        "them",
        "there",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "you",
        "your",
    ]
)
SUPPORT = 0.6  # share of a sentence's content words that must appear in the passage


def _content_words(text: str) -> list[str]:
    return [w for w in WORD.findall(CITATION.sub("", text).lower()) if w not in STOPWORDS]


def _support(sentence: str, passage: str) -> float:
    """Share of a sentence's content words that the passage contains."""
    words = _content_words(sentence)
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
        sentences = SENTENCE.split(paragraph)
        rebuilt = []
        for sentence in sentences:
            words = [w for w in WORD.findall(sentence.lower()) if w not in STOPWORDS]
            if CITATION.search(sentence) or len(words) < 3:
                rebuilt.append(sentence)
                continue
            label, share = max(
                (
                    (label, sum(w in vocab for w in words) / len(words))
                    for label, vocab in vocabularies.items()
                ),
                key=lambda pair: pair[1],
                default=("", 0.0),
            )
            if share >= SUPPORT:
                sentence = f"{sentence.rstrip()} [{label}]"
                attributed += 1
            rebuilt.append(sentence)
        paragraphs.append(" ".join(rebuilt))
    return "".join(paragraphs), attributed


def _strip_citations(text: str, labels: set[str]) -> str:
    for label in labels:
        text = text.replace(f"[{label}]", "")
    return re.sub(r"[ \t]+", " ", text).strip()


def _unsupported_or_leaking(
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
        labels = [label for label in CITATION.findall(sentence) if label in passages]
        if not labels:
            return f"the sentence {sentence.strip()[:80]!r} cites no retrieved passage"
        if all((hits[label].relevance or 0.0) < min_relevance for label in labels):
            return f"the sentence {sentence.strip()[:80]!r} rests on passages off the question"
        if max(_support(sentence, passages[label].text) for label in labels) < SUPPORT:
            return f"the sentence {sentence.strip()[:80]!r} is not supported by what it cites"
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
