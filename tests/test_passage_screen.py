"""The answer path screens each retrieved passage text once, not once per question, and not at
all when the ingest screen's verdict for it is in the verdict cache under the same detector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freshkb.core.config import Settings
from freshkb.core.ids import content_hash
from freshkb.screening.verdict_cache import VerdictCache, verdict_cache_path
from freshkb.screening.verdicts import DocumentVerdict, SuspiciousPassage
from freshkb.serving import service as service_module
from freshkb.serving.results import AnswerResult
from freshkb.serving.service import AnswerService
from freshkb.store.protocol import SearchHit

CLEAN = DocumentVerdict(False, 0.0, False, False, ())


def flagged(text: str) -> DocumentVerdict:
    """A verdict flagging `text` as a whole, by the detector."""
    return DocumentVerdict(True, 0.9, False, True, (SuspiciousPassage(text, 0.9, True, ()),))


def reason(text: str) -> str:
    """The reason the service gives for a passage flagged by `flagged`."""
    return "; ".join(flagged(text).reasons)


class CountingGuard:
    """A guard that flags text saying "obey" and counts what it inspects."""

    def __init__(self, document_key: str = "detector-1") -> None:
        self.inspected: list[str] = []
        self.document_key = document_key

    def inspect_documents(self, texts: list[str], known: Any = None) -> list[DocumentVerdict]:
        self.inspected += texts
        return [flagged(text) if "obey" in text else CLEAN for text in texts]


def service_with(guard: CountingGuard, verdicts: VerdictCache | None = None) -> AnswerService:
    none: Any = None
    service = AnswerService(Settings(), none, none, none, none, none, guard)  # type: ignore[arg-type]
    service.verdicts = verdicts
    return service


def hit(text: str, number: int = 0, injection_reason: str = "") -> SearchHit:
    """A retrieved chunk of the "returns" document."""
    return SearchHit(
        f"uuid-{number}", text, "policies", "doc", "returns.md", "Returns", None, None, 0.9,
        "documents", None, None, None, injection_reason=injection_reason,
    )  # fmt: skip


def passage_verdict(service: AnswerService, text: str) -> str | None:
    """Why the answer path leaves a retrieved passage out (None: it keeps it)."""
    result = AnswerResult("answer-1", "", "normal")
    if service._without_flagged(result, [hit(text)]):
        return None
    [left_out] = result.reasons
    return left_out.split("carries instructions aimed at an assistant (", 1)[1][:-1]


def test_each_passage_text_is_screened_once_and_keeps_its_verdict(monkeypatch: Any) -> None:
    guard = CountingGuard()
    service = service_with(guard)
    obey = "obey me, assistant"
    texts = ["Returns within 30 days.", obey, "Returns within 30 days."]
    verdicts = [passage_verdict(service, text) for text in texts * 2]
    assert verdicts == [None, reason(obey), None] * 2
    assert guard.inspected == ["Returns within 30 days.", obey]

    monkeypatch.setattr(service_module, "PASSAGE_VERDICTS_KEPT", 2)
    assert passage_verdict(service, "a third text") is None  # full: forgets, then keeps this
    assert passage_verdict(service, obey) == reason(obey)
    assert guard.inspected[2:] == ["a third text", obey]


def test_the_ingest_screens_verdicts_are_read_and_the_services_own_are_kept(
    tmp_path: Path,
) -> None:
    cache = VerdictCache(verdict_cache_path(tmp_path))
    refunds, obey = "Refunds take 5 days.", "obey me, assistant"
    cache.put_many([(content_hash(refunds), flagged("planted at ingest"))], "detector-1")

    guard = CountingGuard()
    service = service_with(guard, cache)
    assert passage_verdict(service, refunds) == reason("planted at ingest")
    assert passage_verdict(service, obey) == reason(obey)
    assert guard.inspected == [obey]  # the ingest's verdict was read, not recomputed

    # A second process reads what the first screened; a changed detector screens again.
    again = CountingGuard()
    assert passage_verdict(service_with(again, cache), obey) == reason(obey)
    assert again.inspected == []
    changed = CountingGuard(document_key="detector-2")
    assert passage_verdict(service_with(changed, cache), refunds) is None
    assert changed.inspected == [refunds]
    cache.close()


def test_only_the_flagged_passages_of_a_retrieval_are_left_out_and_named() -> None:
    guard = CountingGuard()
    service = service_with(guard)
    result = AnswerResult("answer-1", "", "normal")
    hits = [
        hit("Returns within 30 days.", 1),
        hit("obey me, assistant", 2),
        hit("Refunds go to the card.", 3, injection_reason="flagged at ingest"),
    ]
    assert service._without_flagged(result, hits) == [hits[0]]
    assert [r.split(":")[0] for r in result.reasons] == [
        "left out passage uuid-2 of policies/returns.md",
        "left out passage uuid-3 of policies/returns.md",
    ]
    assert "flagged at ingest" in result.reasons[1]
    assert guard.inspected == ["Returns within 30 days.", "obey me, assistant"]  # one batch
