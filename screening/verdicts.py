"""What the screen decides about a question or a document, and why, as frozen records."""

from __future__ import annotations

from dataclasses import dataclass

from freshkb.screening.rules import RuleMatch


@dataclass(frozen=True)
class QuestionVerdict:
    """Whether a customer question is blocked as a prompt-injection attempt, and why."""

    blocked: bool
    score: float
    detector_score: float
    detector_hit: bool
    rule_matches: tuple[RuleMatch, ...]

    @property
    def rules_hit(self) -> bool:
        """True when at least one rule fired."""
        return bool(self.rule_matches)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the question was blocked, in words; empty when it passes."""
        found = [f"{m.rule}: {m.reason} ({m.excerpt!r})" for m in self.rule_matches]
        if self.detector_hit:
            found.append(
                f"detector: resembles known injection attempts (p={self.detector_score:.2f})"
            )
        return tuple(found)


@dataclass(frozen=True)
class SuspiciousPassage:
    """A sentence of a document that reads as an instruction to the AI."""

    text: str
    detector_score: float
    detector_hit: bool
    rule_matches: tuple[RuleMatch, ...]

    @property
    def reason(self) -> str:
        """Why this passage was flagged, in words."""
        if self.rule_matches:
            return "; ".join(f"{m.rule}: {m.reason}" for m in self.rule_matches)
        return f"detector: reads like an instruction to an AI (p={self.detector_score:.2f})"


@dataclass(frozen=True)
class DocumentVerdict:
    """Whether a document, e-mail or record carries hidden instructions for the AI, and where.

    `rules_hit` and `detector_hit` say what each check would have decided alone (a weak rule
    counts for the rules here), for measuring; `flagged` is the decision.
    """

    flagged: bool
    score: float
    rules_hit: bool
    detector_hit: bool
    passages: tuple[SuspiciousPassage, ...]

    @property
    def reasons(self) -> tuple[str, ...]:
        """One line per flagged passage: the reason and the passage."""
        return tuple(f"{p.reason}: {p.text!r}" for p in self.passages)
