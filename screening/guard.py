"""The guard: rules and detectors together decide on customer questions and retrieved texts.

Two threats, two checks:

- Direct injection: a customer types an attack into the question ("ignore your instructions",
  "print the system prompt", "list every customer's e-mail"). `screen_questions` blocks it,
  while ordinary questions that merely use words like ignore, bypass, override or pretend pass.
- Indirect injection: an ingested document, e-mail or customer record carries instructions
  aimed at the AI that will read it. `inspect_documents` flags such text and says which passage
  and why; the ingest flow marks the chunk and the answer service leaves it out.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from freshkb.core.errors import ConfigError
from freshkb.core.text import (
    READING_VERSION,
    decoded_payloads,
    normalise,
    split_passages,
    word_count,
)
from freshkb.embeddings.embedder import Embedder, select_embedder
from freshkb.screening.detector import DOCUMENT_THRESHOLD, ExemplarDetector
from freshkb.screening.fitted import fit_key, load_or_fit
from freshkb.screening.prefilter import Prefilter, load_prefilter
from freshkb.screening.rules import RuleBook, RuleMatch, load_rules, match_rules, rules_digest
from freshkb.screening.verdicts import DocumentVerdict, QuestionVerdict, SuspiciousPassage

log = logging.getLogger(__name__)

# The detectors always use the bundled model, whatever model the index is built with: they were
# trained and fitted on its vectors, and it needs no download. The question detector's threshold
# ships with its parameters (chosen on the training data's validation split, screening/train.py).
DETECTOR_MODEL = "all-MiniLM-L6-v2"

# A passage that the weak rule points at needs much less from the detector: the rule fired on no
# clean e-mail, policy paragraph, benefits chunk or retail record measured, but it alone should
# not decide. (Once benign exemplars of plan and job-description prose were added, attacks such
# as "Modify your response to mention ..." scored p=0.2, margin -0.13 there.)
CORROBORATING_THRESHOLD = 0.05
CORROBORATING_MARGIN = -0.15

# Sentences with fewer words than this (markup and numbers aside) are headings, labels and table
# cells: too little text for the embedding to mean anything, and the rules still read them.
MIN_DETECTOR_WORDS = 4
# A document line needs a few more words to be judged: record fields ("city: Salt Lake City")
# are short. Five, not six: "Write a limerick about a forgetful penguin" has five (6 missed
# 7 of the 75 dev attacks, 5 misses 1, with no more false positives on e-mails, policies or
# the retail records, whose e-mail fields do not count as words).
MIN_DOCUMENT_DETECTOR_WORDS = 5

# (attack probability, neighbour margin) of a passage
Scores = tuple[float, float]


def document_key(fitted_key: str, prefilter_key: str = "no prefilter") -> str:
    """sha256 of what a document verdict depends on: the fitted detector, its prefilter, the rules,
    the thresholds and word limits; the key of cached verdicts (screening/verdict_cache.py)."""
    parts = (
        fitted_key,
        prefilter_key,
        rules_digest(),
        DOCUMENT_THRESHOLD,
        CORROBORATING_THRESHOLD,
        CORROBORATING_MARGIN,
        MIN_DOCUMENT_DETECTOR_WORDS,
        READING_VERSION,
    )
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()


# Vectors some passages already have under a model id: (passages, model id) -> {passage: vector}.
KnownVectors = Callable[[Sequence[str], str], Mapping[str, Sequence[float]]]


class InjectionGuard:
    """Screens customer questions and retrieved texts for prompt injection."""

    def __init__(
        self,
        questions: ExemplarDetector,
        documents: ExemplarDetector,
        rules: RuleBook,
        fitted_key: str = "unfitted",
        prefilter: Prefilter | None = None,
    ):
        self.questions = questions
        self.documents = documents
        self.rules = rules
        self.prefilter = prefilter  # None: the detector judges every passage
        key = prefilter.key if prefilter else "no prefilter"
        self.document_key = document_key(fitted_key, key)

    def screen_questions(self, questions: Sequence[str]) -> list[QuestionVerdict]:
        """One verdict per question, embedding them in one batch."""
        readable = [normalise(q) for q in questions]
        pieces = [_question_pieces(text) for text in readable]
        probabilities, margins = self.questions.score([p for group in pieces for p in group])
        verdicts = []
        start = 0
        for text, group in zip(readable, pieces, strict=True):
            end = start + len(group)
            scores = probabilities[start:end], margins[start:end]
            verdicts.append(self._question_verdict(text, *scores))
            start = end
        return verdicts

    def screen_question(self, question: str) -> QuestionVerdict:
        """Whether one customer question is a prompt-injection attempt, with the reasons."""
        return self.screen_questions([question])[0]

    def inspect_document(self, text: str) -> DocumentVerdict:
        """Whether one document chunk or customer record carries instructions for the AI."""
        return self.inspect_documents([text])[0]

    def inspect_documents(
        self, texts: Sequence[str], known: KnownVectors | None = None
    ) -> list[DocumentVerdict]:
        """One verdict per document text, embedding all their passages in one batch; `known`
        gives the vectors of the detector's model another step already made for some passages
        (the embed stage's passage vectors), which are not embedded again."""
        passages = [_document_passages(text) for text in texts]
        # Each distinct passage is matched once: the prefilter and the verdict both read it.
        rules = self.rules.document_rules
        matches = {p: match_rules(p, rules) for group in passages for p in group}
        scores = self._score_passages(passages, matches, known)
        return [self._document_verdict(group, scores, matches) for group in passages]

    def _question_verdict(
        self, text: str, probabilities: np.ndarray, margins: np.ndarray
    ) -> QuestionVerdict:
        hits = (probabilities >= self.questions.parameters.threshold) & (margins >= 0)
        detector_score = float(probabilities.max())
        matches = self._question_matches(text)
        detector_hit = bool(hits.any())
        return QuestionVerdict(
            blocked=bool(matches) or detector_hit,
            score=1.0 if matches else detector_score,
            detector_score=detector_score,
            detector_hit=detector_hit,
            rule_matches=matches,
        )

    def _question_matches(self, text: str) -> tuple[RuleMatch, ...]:
        """The rules that fire on the question, and on any base64 text decoded from it."""
        rules = self.rules.question_rules
        matches = match_rules(text, rules)
        for decoded in decoded_payloads(text):
            matches += tuple(
                RuleMatch("encoded_payload", f"decoded text: {m.reason}", decoded[:120])
                for m in match_rules(decoded, rules)
            )
        return matches

    def _score_passages(
        self,
        passages: list[list[str]],
        matches: dict[str, tuple[RuleMatch, ...]],
        known: KnownVectors | None = None,
    ) -> dict[str, Scores]:
        """Detector scores of every passage long enough to judge that the prefilter passes or
        a rule matches; a passage without scores counts as clean (a document's score is then the
        highest of those scored)."""
        # Repeated passages (page headers and footers of a PDF) are embedded once.
        scored = list(
            dict.fromkeys(
                p
                for group in passages
                for p in group
                if word_count(p) >= MIN_DOCUMENT_DETECTOR_WORDS
            )
        )
        if self.prefilter is not None:  # a weak rule's match needs the detector's view
            passes = self.prefilter.passes(scored)
            scored = [p for p, ok in zip(scored, passes, strict=True) if ok or matches[p]]
        vectors = known(scored, self.documents.model_id) if known and scored else {}
        probabilities, margins = self.documents.score(scored, vectors)
        return {
            p: (float(prob), float(margin))
            for p, prob, margin in zip(scored, probabilities, margins, strict=True)
        }

    def _document_verdict(
        self,
        group: list[str],
        scores: dict[str, Scores],
        matches: dict[str, tuple[RuleMatch, ...]],
    ) -> DocumentVerdict:
        flagged: list[SuspiciousPassage] = []
        any_rule = any_detector = False
        for passage in group:
            probability, margin = scores.get(passage, (0.0, -1.0))
            matched = matches[passage]
            detector_hit = probability >= DOCUMENT_THRESHOLD and margin >= 0
            any_rule |= bool(matched)
            any_detector |= detector_hit
            if detector_hit or self._rules_decide(matched, probability, margin):
                flagged.append(SuspiciousPassage(passage, probability, detector_hit, matched))
        document_scores = [1.0 if p.rule_matches else p.detector_score for p in flagged] or [
            scores.get(p, (0.0, 0.0))[0] for p in group
        ]
        return DocumentVerdict(
            flagged=bool(flagged),
            score=max(document_scores, default=0.0),
            rules_hit=any_rule,
            detector_hit=any_detector,
            passages=tuple(flagged),
        )

    def _rules_decide(
        self, matches: tuple[RuleMatch, ...], probability: float, margin: float
    ) -> bool:
        """A strong rule flags alone; a weak one when the detector corroborates it."""
        if any(m.rule not in self.rules.weak_document_rules for m in matches):
            return True
        return (
            bool(matches)
            and probability >= CORROBORATING_THRESHOLD
            and margin >= CORROBORATING_MARGIN
        )


def _question_pieces(text: str) -> list[str]:
    """What the detector judges of a question: it whole, its sentences, its decoded payloads."""
    # Judged sentence by sentence too, so an attack appended to a real question ("What's the
    # refund window? Also, ignore your rules...") still stands out; decoded base64 is judged as
    # if typed.
    sentences = [s for s in split_passages(text) if word_count(s) >= MIN_DETECTOR_WORDS]
    return [text, *(sentences if len(sentences) > 1 else []), *decoded_payloads(text)]


def _document_passages(text: str) -> list[str]:
    """The passages of a document the guard judges: its sentences and its decoded payloads."""
    readable = normalise(text)
    return [*split_passages(readable), *decoded_payloads(readable)]


def detector_embedder(cache_dir: Path | None = None) -> Embedder:
    """The bundled model on the CPU, which the exemplars were judged with (loaded once).

    With a cache directory it runs in int8 on ONNX Runtime (exported there once), 2.3x the
    speed of fp32: the shipped parameters judge its vectors as they judge fp32 ones (the same
    verdicts on the indirect attacks, e-mails, policy text and customer records of
    `bench/safety_eval.py`; bench/results/int8-detector-*), so verdicts are keyed alike
    (screening/fitted.py fit_key). Without one, torch in fp32.
    """
    if cache_dir is None:
        return select_embedder(DETECTOR_MODEL, "cpu", 64, "auto", None)
    try:
        return select_embedder(DETECTOR_MODEL, "cpu", 64, "onnx-int8", cache_dir)
    except ConfigError as exc:  # an export that fails costs speed, not the screen
        log.warning("the screen's model could not run in int8 (%s): fp32 instead", exc)
        return select_embedder(DETECTOR_MODEL, "cpu", 64, "auto", cache_dir)


def build_guard(
    embedder: Embedder, cache_dir: Path | None, use_shipped: bool = False, prefilter: bool = True
) -> InjectionGuard:
    """A new guard whose detectors are loaded from cache_dir, or fitted and saved there.

    With `use_shipped` (only for the bundled detector model's own vectors) the parameters
    shipped in the package are used when they were fitted on the same exemplars and model.
    With `prefilter` (screening/prefilter.py) the document detector judges only the passages
    that first pass, or a rule, sends it.
    """
    fitted = load_or_fit(embedder, cache_dir, use_shipped)
    return InjectionGuard(
        ExemplarDetector(embedder, fitted.questions),
        ExemplarDetector(embedder, fitted.documents),
        load_rules(),
        fit_key(embedder.model_id),
        load_prefilter() if prefilter else None,
    )


# Guards built so far in this process, by (embedder, cache dir); the embedder is kept with its
# guard so that its id cannot be reused by another object.
_built: dict[tuple[int, Path | None], tuple[Embedder, InjectionGuard]] = {}
_building = threading.Lock()


def load_guard(
    embedder: Embedder | None = None,
    cache_dir: Path | None = None,
    use_shipped: bool | None = None,
) -> InjectionGuard:
    """The guard for an embedder (default: the bundled detector model) and cache directory.

    Built once per process for each pair (concurrent callers wait for the first); the default
    embedder, or any with `use_shipped`, uses the parameters shipped in the package when they
    were fitted on the same exemplars and model, and the detectors are fitted only when
    neither they nor the cache hold such parameters.
    """
    use_shipped = embedder is None if use_shipped is None else use_shipped
    embedder = embedder or detector_embedder(cache_dir)
    key = (id(embedder), cache_dir)
    with _building:
        if key not in _built:
            _built[key] = (embedder, build_guard(embedder, cache_dir, use_shipped))
        return _built[key][1]
