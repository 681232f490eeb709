"""The answer path: safety -> freshness -> retrieval -> answer -> checks, one mode per answer.

Modes:
- normal: the LLM answered from fresh sources only, every paragraph cites a retrieved passage.
- degraded: something was left out or unavailable and the answer says so: stale or failed
  sources left out, stale customer records left out, or the LLM down (an extractive answer
  quoting the best passages, with citations), or the freshness ledger unreadable (every
  source searched, and the answer says their freshness could not be checked).
- escalated: the fresh knowledge base cannot answer (its passages judged not to answer the
  question, serving/answerability.py; the model finds them insufficient; every source stale).
- refused: the question is a prompt-injection attempt, or plainly outside the knowledge base.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy.exc import SQLAlchemyError

from freshkb.core.config import Settings
from freshkb.core.errors import LLMUnavailable, TransientError
from freshkb.core.records import SourceKind
from freshkb.core.timing import timed
from freshkb.embeddings.embedder import Embedder
from freshkb.screening import InjectionGuard
from freshkb.screening.output import OutputVerdict, screen_answer
from freshkb.screening.verdict_cache import VerdictCache, remembered_reasons
from freshkb.serving.answer_log import AnswerJournal
from freshkb.serving.answerability import Decline, decline, judge_hits
from freshkb.serving.answerer import CITATION, Answerer, Completion, Passage, answer_deadline
from freshkb.serving.costs import answer_cost
from freshkb.serving.escalations import EscalationStore
from freshkb.serving.grounding import attribute_citations, strip_citations, unsupported_or_leaking
from freshkb.serving.names import unknown_names
from freshkb.serving.results import (
    FRESHNESS_UNKNOWN,
    FRESHNESS_UNKNOWN_NOTE,
    AnswerResult,
    Citation,
    SourceSelection,
    StaleSource,
    disclaim_unknown_freshness,
    note_left_out,
    quote_passages,
    stale_note,
)
from freshkb.serving.signals import draft_signals, retrieval_signals
from freshkb.store.ledger import Ledger
from freshkb.store.protocol import IndexReader, SearchHit
from freshkb.validation.freshness import SourceFreshness

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
KB_UNAVAILABLE = "knowledge base unavailable"
OWN_RECORDS_NOTE = "Do not state facts about the customer's own account or orders."

__all__ = [
    "FRESHNESS_UNKNOWN",
    "FRESHNESS_UNKNOWN_NOTE",
    "AnswerResult",
    "AnswerService",
    "Citation",
    "SourceSelection",
    "StaleSource",
]


PASSAGE_VERDICTS_KEPT = 50_000  # ~4 MB of keys and reasons


class AnswerService:
    """Answers questions from the fresh part of the index; see the module docstring. With a
    journal, every answer is recorded in the answer log (serving/answer_log.py)."""

    def __init__(
        self,
        settings: Settings,
        store: IndexReader,
        embedder: Embedder,
        ledger: Ledger,
        escalations: EscalationStore,
        answerer: Answerer,
        guard: InjectionGuard,
        journal: AnswerJournal | None = None,
    ):
        self.settings = settings
        self.store = store  # one long-lived client: the v4 client is safe to share
        self.embedder = embedder
        self.ledger = ledger
        self.escalations = escalations
        self.answerer = answerer
        self.guard = guard
        # The guard's verdict per retrieved passage text (by hash): the same chunks come back
        # for many questions, and screening one costs tens of milliseconds of model time.
        self._passage_verdicts: dict[str, str | None] = {}
        # The ingest screen's verdicts, shared through the cache directory (build_runtime).
        self.verdicts: VerdictCache | None = None
        self.journal = journal

    # -- retrieval ----------------------------------------------------------------------

    def freshness(self, customer_id: str | None) -> SourceSelection:
        """The fresh sources to search and those left out; with the ledger unreadable (its
        database locked or down), every source, and the answer says freshness is unknown."""
        try:
            states = self.ledger.states()
        except SQLAlchemyError as exc:
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
            return SourceSelection(None, [], f"{FRESHNESS_UNKNOWN}: ledger unavailable ({cause})")
        fresh: list[str] = []
        left_out: list[SourceFreshness] = []
        for state in states:
            if state.kind == SourceKind.CUSTOMERS.value and customer_id is None:
                continue
            if state.usable:
                fresh.append(state.name)
            else:
                left_out.append(state)
        return SourceSelection(fresh, left_out)

    def search(
        self, question: str, customer_id: str | None = None, k: int = 5
    ) -> tuple[list[SearchHit], list[SourceFreshness]]:
        """Hybrid search over the fresh sources only; also returns the sources left out."""
        hits, selection = self.retrieve(question, customer_id, k)
        return hits, selection.left_out

    def retrieve(
        self,
        question: str,
        customer_id: str | None = None,
        k: int = 5,
        result: AnswerResult | None = None,
    ) -> tuple[list[SearchHit], SourceSelection]:
        """Hybrid search over the fresh sources only, with the selection that chose them; the
        question's vector is kept in `result`'s trace for the answer log."""
        selection = self.freshness(customer_id)
        vector = self.embedder.embed([question])[0]
        if result is not None:
            result.trace.question_vector = vector
        hits = self.store.search(
            question,
            vector,
            k=k,
            customer_id=customer_id,
            alpha=self.settings.search_alpha,
            sources=selection.fresh,
        )
        return hits, selection

    # -- answering ----------------------------------------------------------------------

    def answer(
        self,
        question: str,
        customer_id: str | None = None,
        k: int = 5,
        deadline: float | None = None,
    ) -> AnswerResult:
        """One answer, in one of the four modes, with citations, reasons and signals; logged
        when the service has a journal. With a `deadline` (time.monotonic()), the LLM is not
        waited for past it: the passages are quoted instead."""
        result = AnswerResult(
            answer_id=str(uuid.uuid4()),
            answer="",
            mode="normal",
            model=self.settings.llm_model,
            prompt_version=self.settings.prompt_version,
            embedding_model=self.embedder.model_id,
        )
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        try:
            with answer_deadline(deadline):
                disclaim_unknown_freshness(self._answer(result, seconds, question, customer_id, k))
        finally:
            result.timings_ms.update(
                {stage: round(spent * 1000, 1) for stage, spent in seconds.items()}
            )
        if self.journal is not None:
            self.journal.record(result, question, customer_id, time.perf_counter() - started)
        return result

    def _answer(
        self,
        result: AnswerResult,
        seconds: dict[str, float],
        question: str,
        customer_id: str | None,
        k: int,
    ) -> AnswerResult:
        """The steps of `answer`; each early return is one of the modes."""
        with timed(seconds, "safety"):
            verdict = self.guard.screen_question(question)
        if verdict.blocked:
            result.mode, result.answer = "refused", REFUSAL_INJECTION
            result.reasons.append(
                "question blocked as prompt injection: " + "; ".join(verdict.reasons)
            )
            return result
        with timed(seconds, "retrieve"):
            try:
                hits, selection = self.retrieve(question, customer_id, k, result)
                unknown = unknown_names(self.store, question, customer_id, selection.fresh)
            except TransientError as exc:  # Weaviate down: a human answers, never a 500
                return self._escalate(result, question, customer_id, [], f"{KB_UNAVAILABLE}: {exc}")
        own_records_stale = note_left_out(result, selection, customer_id)
        with timed(seconds, "screen"):
            usable = self._without_flagged(result, hits)
        judgement = judge_hits(question, usable, self.settings, unknown)
        result.best_relevance = judgement.evidence.best_relevance
        result.trace.answerability = judgement
        result.signals += retrieval_signals(
            result.best_relevance, self.settings.answer_min_relevance, judgement.answerable
        )
        declined = decline(judgement, bool(result.stale_sources), not usable and not hits)
        if declined is not None or not usable:
            return self._decline(result, question, customer_id, usable, declined)
        passages = [
            Passage(f"S{n}", hit.uuid, hit.title, hit.text) for n, hit in enumerate(usable, 1)
        ]
        by_label = dict(zip((p.label for p in passages), usable, strict=True))
        note = OWN_RECORDS_NOTE if own_records_stale else ""
        try:
            with timed(seconds, "llm"):
                completion = self.answerer.answer(question, passages, note)
        except LLMUnavailable as exc:
            result.reasons.append(f"LLM unavailable, answered by quoting: {exc}")
            return quote_passages(result, passages, by_label, EXTRACTIVE_LEAD)
        return self._serve(result, question, customer_id, completion, passages, by_label)

    def _without_flagged(self, result: AnswerResult, hits: list[SearchHit]) -> list[SearchHit]:
        """The hits that carry no instructions aimed at an assistant; the others are named."""
        # Flagged at ingestion; checked again here for objects written before the flag
        # existed, and because the detector may have improved since.
        reasons = self._passage_verdicts_of([hit.text for hit in hits if not hit.injection_reason])
        usable: list[SearchHit] = []
        for hit in hits:
            reason = hit.injection_reason or reasons[hit.text]
            if reason:
                result.reasons.append(
                    f"left out passage {hit.uuid} of {hit.source}/{hit.document_key}: it "
                    f"carries instructions aimed at an assistant ({reason})"
                )
            else:
                usable.append(hit)
        return usable

    def _passage_verdicts_of(self, texts: list[str]) -> dict[str, str | None]:
        """Why the guard flags each passage (None: it does not); see `remembered_reasons`."""
        return remembered_reasons(
            self.guard, texts, self._passage_verdicts, self.verdicts, PASSAGE_VERDICTS_KEPT
        )

    def _decline(
        self,
        result: AnswerResult,
        question: str,
        customer_id: str | None,
        usable: list[SearchHit],
        declined: Decline | None,
    ) -> AnswerResult:
        """Refused as off-topic, or escalated to a human, with why (the answerability rule)."""
        if declined is None:  # every passage was left out as instructions: a human looks
            declined = Decline("escalated", "every retrieved passage was left out")
        if declined.mode == "refused":
            result.mode, result.answer = "refused", REFUSAL_OFF_TOPIC
            result.reasons.append(declined.reason)
            return result
        return self._escalate(result, question, customer_id, usable, declined.reason)

    def _serve(
        self,
        result: AnswerResult,
        question: str,
        customer_id: str | None,
        completion: Completion,
        passages: list[Passage],
        by_label: dict[str, SearchHit],
    ) -> AnswerResult:
        """The model's answer if it is grounded and passes the output screen; else the passages
        quoted instead, or escalated (unsafe content on a question that raises it too)."""
        result.tokens = {
            "prompt": completion.prompt_tokens,
            "completion": completion.completion_tokens,
        }
        result.trace.llm_seconds = completion.seconds
        tokens = (completion.prompt_tokens, completion.completion_tokens)
        result.cost_usd = answer_cost(*tokens, completion.seconds, self.settings)
        if completion.insufficient:
            usable = list(by_label.values())
            why = "the model found the passages insufficient"
            return self._escalate(result, question, customer_id, usable, why)
        text = self._cited_text(result, completion, passages, by_label)
        verdict = self._screen_output(result, question, text, passages)
        texts = {p.label: p.text for p in passages}
        result.signals += draft_signals(completion.cited, text, texts, verdict)
        threshold = self.settings.answer_min_relevance
        by_passage = {p.label: p for p in passages}
        problem = unsupported_or_leaking(text, by_passage, by_label, threshold, customer_id)
        if problem:
            result.reasons.append(f"model answer rejected: {problem}; answered by quoting")
        if verdict.action == "escalate":
            why = f"model answer rejected by output screen: {verdict.reason}; escalated"
            return self._escalate(result, question, customer_id, list(by_label.values()), why)
        if verdict.action == "quote":
            result.reasons.append(
                f"model answer rejected by output screen: {verdict.reason}; answered by quoting"
            )
        if problem or not verdict.passed:
            return quote_passages(result, passages, by_label, QUOTED_LEAD)
        result.answer = text
        cited = dict.fromkeys(CITATION.findall(text))
        result.citations = [Citation.of(label, by_label[label]) for label in cited]
        if result.stale_sources:
            result.mode = "degraded"
            result.answer += "\n\n" + stale_note(result.stale_sources)
        return result

    def _screen_output(
        self, result: AnswerResult, question: str, text: str, passages: list[Passage]
    ) -> OutputVerdict:
        """The output screen's verdict on the model's text, timed as `output_screen`."""
        cited = set(CITATION.findall(text))
        seconds: dict[str, float] = {}
        with timed(seconds, "output_screen"):
            verdict = screen_answer(
                text,
                cited=[f"{p.title}\n{p.text}" for p in passages if p.label in cited],
                retrieved=[f"{p.title}\n{p.text}" for p in passages],
                question=question,
            )
        result.timings_ms["output_screen"] = round(seconds["output_screen"] * 1000, 1)
        return verdict

    def _cited_text(
        self,
        result: AnswerResult,
        completion: Completion,
        passages: list[Passage],
        by_label: dict[str, SearchHit],
    ) -> str:
        """The model's text with invalid citations dropped and missing ones attributed."""
        invalid = [label for label in completion.cited if label not in by_label]
        text = strip_citations(completion.text, set(invalid))
        if invalid:
            result.reasons.append(f"dropped invalid citations: {', '.join(invalid)}")
        threshold = self.settings.answer_min_relevance
        relevant = [p for p in passages if (by_label[p.label].relevance or 0.0) >= threshold]
        text, attributed = attribute_citations(text, relevant)
        if attributed:
            result.reasons.append(
                f"{attributed} uncited sentence(s) attributed to the passage they quote"
            )
        return text

    def _escalate(
        self,
        result: AnswerResult,
        question: str,
        customer_id: str | None,
        hits: list[SearchHit],
        why: str,
    ) -> AnswerResult:
        """Hand the question to a human, with what was retrieved."""
        result.mode = "escalated"
        result.reasons.append(why)
        result.answer = ESCALATION_MESSAGE
        if result.stale_sources:
            result.answer += " " + stale_note(result.stale_sources)
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
