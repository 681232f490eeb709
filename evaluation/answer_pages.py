"""The pages that hold a reference answer: the page it cites, and the next page when that one
holds more of it.

Generated benchmarks such as the benefits cases cite the page on which the passage an answer was
written from began. When that passage ran on to the next page, most of the answer can be there:
on the development cases, 23 of the 101 reference answers share more word trigrams with the
page after the one they cite than with the cited page (and none with the page before). A
retriever that returns the page the answer is on is then scored as a miss.

The `answer_page_*` figures count a retrieved page as right when it is a cited page or such a
next page. They are a diagnostic beside `page_hit_at_*`, which stays the measure that goals and
SLOs name: they tell how much of a page-level miss is the label's page convention and how much
is retrieval. The next page is chosen from the corpus text and the reference answer alone, never
from what was retrieved.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache, cached_property
from pathlib import Path

from freshkb.evaluation.cases import TRUTH_CITATION, PageRef, QaCase
from freshkb.evaluation.metrics import Outcome, first_rank
from freshkb.serving.grounding import STOPWORDS

# (file name, 1-based page) -> the page's text, or None when there is no such page
PageText = Callable[[str, int], str | None]

_WORD = re.compile(r"[a-z0-9$%]+")
_CITATION = re.compile(r"\[[^\[\]]+\]")


def trigrams(text: str) -> set[tuple[str, str, str]]:
    """The text's runs of three consecutive words, stopwords left out."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return {(a, b, c) for a, b, c in zip(words, words[1:], words[2:], strict=False)}


def cited_passages(truth: str) -> dict[PageRef, str]:
    """Each page a reference answer cites, with the text it cites that page for: the words
    since the citation before (the whole answer for a citation that follows another at once)."""
    whole = _CITATION.sub(" ", truth)
    passages: dict[PageRef, str] = {}
    start = 0
    for match in TRUTH_CITATION.finditer(truth):
        name, page = match.groups()
        ref = PageRef(name, int(page) if page else None)
        text = _CITATION.sub(" ", truth[start : match.start()])
        passages[ref] = passages.get(ref, "") + " " + (text if trigrams(text) else whole)
        start = match.end()
    return passages


def answer_pages(
    truth: str, cited: Sequence[PageRef], page_text: PageText
) -> tuple[PageRef, ...] | None:
    """The cited pages, each followed by the next page when that page's text shares more
    trigrams of the text cited for it than the cited page does (ties keep the cited page
    alone); None when a cited page's text cannot be read, so the case cannot be judged."""
    passages = cited_passages(truth)
    pages: list[PageRef] = []
    for ref in cited:
        pages.append(ref)
        if ref.page is None:
            continue
        here = page_text(ref.file, ref.page)
        if here is None:
            return None
        answer = trigrams(passages.get(ref, _CITATION.sub(" ", truth)))
        after = page_text(ref.file, ref.page + 1)
        if after is not None and len(answer & trigrams(after)) > len(answer & trigrams(here)):
            pages.append(PageRef(ref.file, ref.page + 1))
    return tuple(pages)


def judge_answer_pages(outcome: Outcome, case: QaCase, pages: PageText | None) -> Outcome:
    """The outcome with the rank of the first retrieved page that holds the reference answer;
    unjudged (None) without the corpus's page texts or when a cited page cannot be read."""
    holding = None if pages is None else answer_pages(case.truth, case.pages, pages)
    if holding is None:
        return outcome
    found = [(r.file, r.page) for r in outcome.retrieved]
    return replace(
        outcome,
        answer_page_rank=first_rank(found, holding),
        answer_page_moved=len(holding) > len(case.pages),
    )


class PdfPageTexts:
    """Page texts of the PDF files under a corpus folder, found by file name (PDFium: a
    263-page corpus reads in well under a second). A file that is missing, not a readable PDF,
    or whose name two files under the folder share, has no pages."""

    def __init__(self, corpus: Path):
        self.corpus = corpus

    def __call__(self, file: str, page: int) -> str | None:
        pages = self._pages(file)
        return pages[page - 1] if 1 <= page <= len(pages) else None

    @cached_property
    def _paths(self) -> dict[str, list[Path]]:
        paths: dict[str, list[Path]] = {}
        for path in sorted(self.corpus.rglob("*")):
            if path.suffix.lower() == ".pdf" and path.is_file():
                paths.setdefault(path.name, []).append(path)
        return paths

    @cache  # noqa: B019 - one reader per evaluation run, kept for its length
    def _pages(self, file: str) -> tuple[str, ...]:
        import pypdfium2

        found = self._paths.get(file, [])
        if len(found) != 1:
            return ()
        try:
            document = pypdfium2.PdfDocument(found[0])
        except pypdfium2.PdfiumError:
            return ()
        try:
            return tuple(page.get_textpage().get_text_range() for page in document)
        finally:
            document.close()
