"""Screening: prompt-injection checks of customer questions and of the texts the AI will read.

Rules (data/rules.yaml) and a detector learned from exemplars (data/exemplars/) judge together;
the ingest flow flags chunks with `InjectionGuard.inspect_documents`, the answer service blocks
questions with `InjectionGuard.screen_questions`. Get a guard with `load_guard`.
"""

from freshkb.screening.guard import DETECTOR_MODEL, InjectionGuard, build_guard, load_guard
from freshkb.screening.rules import RuleMatch
from freshkb.screening.verdicts import DocumentVerdict, QuestionVerdict, SuspiciousPassage

__all__ = [
    "DETECTOR_MODEL",
    "DocumentVerdict",
    "InjectionGuard",
    "QuestionVerdict",
    "RuleMatch",
    "SuspiciousPassage",
    "build_guard",
    "load_guard",
]
