"""What the reviews give back: the hallucination rate they measure (with its confidence
interval), and the reviewed answers as new evaluation cases in the dev set's formats."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from freshkb.evaluation.review import RISKS, ReviewItem, ReviewQueue
from freshkb.serving.answer_log import AnswerLog, LoggedAnswer


def wilson_interval(hits: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion hits/total (95% by default); (0, 1) for none.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or
    `total` hits, which is where a hallucination rate usually sits.
    """
    if total <= 0:
        return 0.0, 1.0
    share = hits / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)


@dataclass(frozen=True)
class Tally:
    """Reviewed answers of one group and how many were wrong."""

    reviewed: int
    incorrect: int
    should_decline: int


@dataclass(frozen=True)
class HallucinationRate:
    """Incorrect among reviewed normal-mode answers of the random sample, with its 95%
    Wilson interval; the high-risk answers (picked on purpose, so biased) per risk apart."""

    sample: Tally
    rate: float | None
    low: float
    high: float
    high_risk: dict[str, Tally]
    pending: int

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return asdict(self)


def _tally(items: Iterable[ReviewItem]) -> Tally:
    verdicts = [item.verdict for item in items if item.verdict is not None]
    return Tally(len(verdicts), verdicts.count("incorrect"), verdicts.count("should_decline"))


def hallucination_rate(items: list[ReviewItem]) -> HallucinationRate:
    """The measured hallucination rate of the reviewed queue."""
    sample = _tally(item for item in items if item.sampled and item.mode == "normal")
    low, high = wilson_interval(sample.incorrect, sample.reviewed)
    return HallucinationRate(
        sample=sample,
        rate=sample.incorrect / sample.reviewed if sample.reviewed else None,
        low=low,
        high=high,
        high_risk={risk: _tally(item for item in items if risk in item.risks) for risk in RISKS},
        pending=sum(item.verdict is None for item in items),
    )


# -- marks as evaluation cases ------------------------------------------------------------------

QA_FILE = "reviewed_qa.jsonl"
OUT_OF_SCOPE_FILE = "reviewed_out_of_scope.jsonl"
_CITED = re.compile(r"\[[^\[\]]+\]")  # citations in an answer: [S1] or [FILE#page=N]


@dataclass(frozen=True)
class Export:
    """What `export_cases` wrote, and what it had to leave out and why."""

    qa: int
    out_of_scope: int
    skipped_question_not_logged: int  # privacy "hash": only the question's hash was kept
    skipped_no_truth: int  # incorrect without a correction, or no answer text to keep
    skipped_pruned: int  # gone from the answer log (retention)
    files: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return asdict(self)


def cited_pages(entry: LoggedAnswer) -> str:
    """The logged citations as the dev cases write them: `[FILE#page=N]`, or `[FILE]` for a
    document without pages (the file by its name, as `freshkb.evaluation.cases` reads it)."""
    cited: list[str] = []
    for citation in entry.citations:
        if not citation.get("document"):
            continue
        name = PurePosixPath(str(citation["document"])).name
        page = citation.get("page")
        text = f"[{name}]" if page is None else f"[{name}#page={int(page)}]"
        if text not in cited:
            cited.append(text)
    return "".join(cited)


def case_truth(item: ReviewItem, entry: LoggedAnswer) -> str | None:
    """The truth a reviewed answer gives an evaluation case, or None if it gives none.

    A correction is the truth as the reviewer wrote it (with any `[DOC#page=N]` they cite);
    a correct answer's own text is the truth, ending with its logged page citations.
    """
    if item.verdict == "should_decline":
        return item.note or "reviewed: the knowledge base does not answer this; decline"
    if item.correction:
        return item.correction
    answer = entry.answer
    if item.verdict != "correct" or not answer:
        return None
    text = _CITED.sub("", str(answer)).rstrip()
    return text + cited_pages(entry)


def export_cases(queue: ReviewQueue, log: AnswerLog, folder: Path) -> Export:
    """Write the reviewed answers as cases in the formats of the dev eval set: folder/
    reviewed_qa.jsonl and folder/reviewed_out_of_scope.jsonl, each {"question", "truth"}.

    A question asked more than once gives one case, from its latest review.
    """
    qa: dict[str, str] = {}
    declined: dict[str, str] = {}
    skipped = {"text": 0, "truth": 0, "pruned": 0}
    reviewed = [item for item in queue.items() if item.verdict is not None]
    for item in sorted(reviewed, key=lambda item: item.reviewed_at or item.queued_at):
        entry = log.find(item.answer_id)
        truth = None if entry is None else case_truth(item, entry)
        if entry is None:
            skipped["pruned"] += 1
        elif entry.question is None:
            skipped["text"] += 1
        elif truth is None:
            skipped["truth"] += 1
        else:
            chosen = declined if item.verdict == "should_decline" else qa
            (qa if chosen is declined else declined).pop(entry.question, None)
            chosen[entry.question] = truth
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, cases in ((QA_FILE, qa), (OUT_OF_SCOPE_FILE, declined)):
        path = folder / name
        lines = (
            json.dumps({"question": q, "truth": t}, ensure_ascii=False) for q, t in cases.items()
        )
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        files.append(str(path))
    return Export(
        len(qa), len(declined), skipped["text"], skipped["truth"], skipped["pruned"], files
    )
