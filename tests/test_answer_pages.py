"""The evaluation's answer pages (evaluation/answer_pages.py): the cited page, plus the next page
when it holds more of the reference answer; PDF page texts from the bundled sample; the
`answer_page_*` figures beside `page_hit_at_*`."""

from __future__ import annotations

from pathlib import Path

import pytest

from freshkb.evaluation.answer_pages import (
    PdfPageTexts,
    answer_pages,
    judge_answer_pages,
    trigrams,
)
from freshkb.evaluation.cases import PageRef, QaCase
from freshkb.evaluation.metrics import Outcome, Retrieved, summarise

REPO = Path(__file__).resolve().parents[1]
RENTAL = "rental-terms.pdf"  # sample/policies: page 2 is "Deposits and damage"
DEPOSIT = "A refundable deposit of 150 dollars is held on a credit card for each rental."

PAGES = {
    ("plan.pdf", 4): "Specialist referrals. Members need a referral before seeing a specialist.",
    ("plan.pdf", 5): "Copays. A primary care visit costs a copay of 20 dollars and a specialist "
    "visit a copay of 50 dollars under the plan.",
}


def page_text(file: str, page: int) -> str | None:
    return PAGES.get((file, page))


@pytest.mark.timeout(10)
def test_the_next_page_is_added_only_when_it_holds_more_of_the_answer() -> None:
    truth = "A primary care visit costs a copay of 20 dollars.[plan.pdf#page=4]"
    cited = (PageRef("plan.pdf", 4),)
    assert answer_pages(truth, cited, page_text) == (PageRef("plan.pdf", 4), PageRef("plan.pdf", 5))
    # the cited page holds it: nothing added, and the page before is never considered
    referral = "Members need a referral before seeing a specialist.[plan.pdf#page=4]"
    assert answer_pages(referral, cited, page_text) == cited
    assert answer_pages(truth, (PageRef("plan.pdf", 5),), page_text) == (PageRef("plan.pdf", 5),)
    # a file without pages, an answer without trigrams: the citation as it is
    assert answer_pages(truth, (PageRef("notes.md", None),), page_text) == (
        PageRef("notes.md", None),
    )
    assert answer_pages("Yes.", cited, page_text) == cited
    # a cited page that cannot be read: the case cannot be judged
    assert answer_pages(truth, (PageRef("plan.pdf", 0),), page_text) is None
    assert answer_pages(truth, (PageRef("other.pdf", 4),), page_text) is None


@pytest.mark.timeout(10)
def test_each_citation_is_judged_on_the_text_it_cites() -> None:
    # The copay sentence cites page 2 of another file; only the referral text cites page 4,
    # and page 4 holds it: nothing moves, though page 5 holds the copay sentence.
    truth = (
        "Members need a referral before seeing a specialist.[plan.pdf#page=4] "
        "A primary care visit costs a copay of 20 dollars.[guide.pdf#page=2]"
    )
    cited = (PageRef("plan.pdf", 4), PageRef("guide.pdf", 2))
    guide = {("guide.pdf", 2): "Copays are listed in the plan.", ("guide.pdf", 3): "Index."}
    texts = {**PAGES, **guide}
    assert answer_pages(truth, cited, lambda f, n: texts.get((f, n))) == cited
    # two citations in a row share the text before them
    both = "A primary care visit costs a copay of 20 dollars.[plan.pdf#page=4][guide.pdf#page=2]"
    moved = answer_pages(both, cited, lambda f, n: texts.get((f, n)))
    assert moved == (PageRef("plan.pdf", 4), PageRef("plan.pdf", 5), PageRef("guide.pdf", 2))


@pytest.mark.timeout(10)
def test_trigrams_skip_stopwords() -> None:
    assert trigrams("The copay of the visit is 20 dollars") == {
        ("copay", "visit", "20"),
        ("visit", "20", "dollars"),
    }


@pytest.mark.timeout(30)
def test_pdf_page_texts_come_from_the_corpus_by_file_name(tmp_path: Path) -> None:
    texts = PdfPageTexts(REPO / "sample")
    assert "refundable deposit" in (texts(RENTAL, 2) or "")
    assert texts(RENTAL, 4) is None and texts(RENTAL, 0) is None
    assert texts("missing.pdf", 1) is None and texts("returns.md", 1) is None
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really a PDF")
    assert PdfPageTexts(tmp_path)("broken.pdf", 1) is None
    # names are names, not patterns; a name two files share is nobody's
    rental = (REPO / "sample" / "policies" / RENTAL).read_bytes()
    (tmp_path / "Terms [2024].pdf").write_bytes(rental)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "twice.pdf").write_bytes(rental)
    in_tmp = PdfPageTexts(tmp_path)
    assert "refundable deposit" in (in_tmp("Terms [2024].pdf", 2) or "")
    assert in_tmp("twice.pdf", 2) is None and in_tmp("/etc/passwd", 1) is None
    # the answer sits on page 2; a label citing page 1 gains page 2, one citing page 2 keeps it
    truth = f"{DEPOSIT}[{RENTAL}#page=1]"
    assert answer_pages(truth, (PageRef(RENTAL, 1),), texts) == (
        PageRef(RENTAL, 1),
        PageRef(RENTAL, 2),
    )
    assert answer_pages(truth, (PageRef(RENTAL, 2),), texts) == (PageRef(RENTAL, 2),)


@pytest.mark.timeout(10)
def test_answer_page_figures_sit_beside_the_page_figures_and_only_when_judged() -> None:
    judged = [(None, 1, True), (2, 2, False), (None, None, True), (1, 1, False)]
    outcomes = [
        Outcome(f"q{i}", "qa", "?", "degraded", rank=r, answer_page_rank=a, answer_page_moved=m)
        for i, (r, a, m) in enumerate(judged)
    ]
    figures = summarise(outcomes, k=5)
    assert figures["page_hit_at_1"] == 0.25 and figures["page_hit_at_5"] == 0.5
    assert figures["answer_page_hit_at_1"] == 0.5 and figures["answer_page_hit_at_5"] == 0.75
    assert figures["answer_page_moved"] == 0.5
    unjudged = summarise([Outcome("q1", "qa", "?", "degraded", rank=1)], k=5)
    assert "answer_page_hit_at_1" not in unjudged and "answer_page_moved" not in unjudged


@pytest.mark.timeout(10)
def test_a_case_is_ranked_on_its_answer_pages_from_what_was_retrieved() -> None:
    case = QaCase(
        "c1",
        "?",
        "A primary care visit costs a copay of 20 dollars.[plan.pdf#page=4]",
        (PageRef("plan.pdf", 4),),
    )
    retrieved = tuple(
        Retrieved(f"id{page}", "plans", "plan.pdf", page, "Plan", "...") for page in (5, 9, 4)
    )
    outcome = Outcome("c1", "qa", "?", "degraded", retrieved=retrieved, rank=3)
    judged = judge_answer_pages(outcome, case, page_text)
    assert judged.answer_page_rank == 1 and judged.answer_page_moved is True
    assert judged.rank == 3  # the page figure keeps the label's page
    unjudged = judge_answer_pages(outcome, case, None)
    assert unjudged.answer_page_rank is None and unjudged.answer_page_moved is None
    unreadable = judge_answer_pages(outcome, case, lambda file, page: None)
    assert unreadable.answer_page_moved is None
