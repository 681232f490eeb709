"""Evaluation cases: the files of an eval directory, read by name into typed cases.

Formats (those of ../shared/eval/dev, plus a staleness scenario of freshkb's own):
- `*qa.jsonl`: `question`, `truth`; the truth ends with citations `[FILE#page=N]` (or `[FILE]`
  for a document without pages) of what answers it. Answerable.
- `*out_of_scope*.jsonl`: `question`. Must be refused or escalated.
- `*injection*.jsonl`: `text`, `label` (injection | benign). Typed straight into the question.
- `indirect_injection_attacks.json` (category -> instructions) with `*email_contexts*.jsonl`
  (`context`, `question`, `ideal`): each instruction is hidden in an e-mail that is ingested,
  then the e-mail's ordinary question is asked.
- `*staleness*.jsonl`: `question`, `source` (a source of the evaluation index), `state`
  (stale | failed: how the ledger is set before asking), `expected_mode`, `disclaimer` (text
  the answer must contain).
Every other file is listed in `CaseSet.ignored` with why, never skipped without a word.

Halves: every case falls in half A or B by the SHA-256 of its text (the question, or the typed
text of an injection case), so a method is tuned on A and checked on B, and a case keeps its
half when files are reordered or grow.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from freshkb.core.errors import ConfigError
from freshkb.core.ids import text_half

# `[Benefit_Options.pdf#page=3]` or `[returns.md]`: the file, and the page when it has pages.
TRUTH_CITATION = re.compile(r"\[([^\[\]#\s]+\.[A-Za-z0-9]+)(?:#page=(\d+))?\]")
INDIRECT_ATTACKS = "indirect_injection_attacks.json"
STALE_STATES = ("stale", "failed")
MODES = ("normal", "degraded", "escalated", "refused")
HALVES = ("A", "B")


class CaseError(ConfigError):
    """An eval case file that cannot be read; the message names the file, line and fix."""


@dataclass(frozen=True)
class PageRef:
    """A page that answers a question: the file name, and its page (None: no pages)."""

    file: str
    page: int | None

    def matches(self, file: str, page: int | None) -> bool:
        """True when a retrieved (file, page) is this page (any page of a page-less file)."""
        return file == self.file and (self.page is None or page == self.page)


@dataclass(frozen=True)
class QaCase:
    """An answerable question, its reference answer, and the pages that answer it."""

    id: str
    question: str
    truth: str
    pages: tuple[PageRef, ...]


@dataclass(frozen=True)
class OutOfScopeCase:
    """A question the knowledge base does not answer."""

    id: str
    question: str


@dataclass(frozen=True)
class InjectionCase:
    """Text typed straight into the question: an injection attempt, or a benign question."""

    id: str
    text: str
    label: Literal["injection", "benign"]


@dataclass(frozen=True)
class IndirectCase:
    """An instruction hidden in an ingested e-mail, and the e-mail's ordinary question."""

    id: str
    category: str
    attack: str
    context: str
    question: str
    ideal: str

    @property
    def document_name(self) -> str:
        """The file the e-mail is ingested as."""
        return f"{self.id}.txt"

    def tainted_text(self) -> str:
        """The e-mail with the instruction planted in its middle, at a sentence break."""
        middle = len(self.context) // 2
        cut = self.context.find(". ", middle)
        cut = middle if cut < 0 else cut + 2
        return f"{self.context[:cut]}{self.attack} {self.context[cut:]}"


@dataclass(frozen=True)
class StalenessCase:
    """A source made stale or failing in the ledger, a question, and what the answer must do."""

    id: str
    question: str
    source: str
    state: Literal["stale", "failed"]
    expected_mode: str
    disclaimer: str


@dataclass(frozen=True)
class IgnoredFile:
    """A file of the cases directory that holds no cases, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class CaseSet:
    """Every case of a directory, by kind, and the files that held none."""

    qa: tuple[QaCase, ...] = ()
    out_of_scope: tuple[OutOfScopeCase, ...] = ()
    injection: tuple[InjectionCase, ...] = ()
    indirect: tuple[IndirectCase, ...] = ()
    staleness: tuple[StalenessCase, ...] = ()
    files: tuple[str, ...] = ()
    ignored: tuple[IgnoredFile, ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        """How many cases there are of every kind."""
        return sum(len(group) for group in self.groups().values())

    def groups(self) -> dict[str, tuple[Any, ...]]:
        """The cases by kind."""
        return {
            "qa": self.qa,
            "out_of_scope": self.out_of_scope,
            "injection": self.injection,
            "indirect": self.indirect,
            "staleness": self.staleness,
        }

    def half(self, name: str) -> CaseSet:
        """Only the cases of half `name` (A or B; "all": every case)."""
        if name == "all":
            return self
        if name not in HALVES:
            raise CaseError(f"no half {name!r}: use A, B or all")
        return replace(
            self,
            qa=_in_half(self.qa, name),
            out_of_scope=_in_half(self.out_of_scope, name),
            injection=_in_half(self.injection, name),
            indirect=_in_half(self.indirect, name),
            staleness=_in_half(self.staleness, name),
        )

    def limited(self, limit: int | None) -> CaseSet:
        """At most `limit` cases of each kind (the first ones, so runs are comparable)."""
        if limit is None:
            return self
        return replace(
            self,
            qa=self.qa[:limit],
            out_of_scope=self.out_of_scope[:limit],
            injection=self.injection[:limit],
            indirect=self.indirect[:limit],
            staleness=self.staleness[:limit],
        )


def half_of(case: Any) -> str:
    """The half (A or B) a case falls in: the parity of the first byte of its text's SHA-256."""
    text = case.text if isinstance(case, InjectionCase) else case.question
    if isinstance(case, IndirectCase):
        text = f"{case.attack}\n{case.question}"  # one e-mail carries several attacks
    return text_half(text)


def _in_half(cases: tuple[Any, ...], name: str) -> tuple[Any, ...]:
    return tuple(case for case in cases if half_of(case) == name)


def truth_pages(truth: str) -> tuple[PageRef, ...]:
    """The pages a truth cites, in order, without repeats."""
    found = TRUTH_CITATION.findall(truth)
    return tuple(dict.fromkeys(PageRef(name, int(page) if page else None) for name, page in found))


def load_cases(directory: Path) -> CaseSet:
    """Every case in `directory`; a CaseError naming the file and the fix for a bad one."""
    if not directory.is_dir():
        raise CaseError(
            f"{directory}: no such cases directory; pass --cases with a folder of eval files "
            "(e.g. ../shared/eval/dev)"
        )
    found: dict[str, list[Any]] = {kind: [] for kind in CaseSet().groups()}
    files: list[str] = []
    ignored: list[IgnoredFile] = []
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    for name in names:
        path = directory / name
        kind = _kind_of(name, names)
        if kind is None:
            ignored.append(IgnoredFile(name, _why_ignored(name)))
            continue
        if kind == "attacks":
            continue  # read with the e-mail contexts that carry them
        files.append(name)
        found[kind].extend(_read_kind(kind, path, directory))
    return CaseSet(
        qa=tuple(found["qa"]),
        out_of_scope=tuple(found["out_of_scope"]),
        injection=tuple(found["injection"]),
        indirect=tuple(found["indirect"]),
        staleness=tuple(found["staleness"]),
        files=tuple(files),
        ignored=tuple(ignored),
    )


def _kind_of(name: str, names: list[str]) -> str | None:
    """Which kind of cases a file holds, by its name; None for none."""
    if name == INDIRECT_ATTACKS:
        return "attacks" if any("email_contexts" in n for n in names) else None
    if not name.endswith(".jsonl"):
        return None
    if "email_contexts" in name:
        return "indirect"
    if "out_of_scope" in name:
        return "out_of_scope"
    if "staleness" in name:
        return "staleness"
    if "injection" in name:
        return "injection"
    if name.endswith("qa.jsonl"):
        return "qa"
    return None


def _why_ignored(name: str) -> str:
    if name == INDIRECT_ATTACKS:
        return "attacks without an *email_contexts*.jsonl file to hide them in"
    if name.endswith((".json", ".jsonl")):
        return (
            "not a known case file name (*qa.jsonl, *out_of_scope*.jsonl, *injection*.jsonl, "
            "*email_contexts*.jsonl with indirect_injection_attacks.json, *staleness*.jsonl)"
        )
    return "not a case file"


def _read_kind(kind: str, path: Path, directory: Path) -> list[Any]:
    """The cases of one file of a known kind."""
    rows = _json_lines(path)
    stem = path.stem
    if kind == "qa":
        return [_qa(path, n, row, stem) for n, row in rows]
    if kind == "out_of_scope":
        return [OutOfScopeCase(f"{stem}:{n}", _text(path, n, row, "question")) for n, row in rows]
    if kind == "injection":
        return [_injection(path, n, row, stem) for n, row in rows]
    if kind == "staleness":
        return [_staleness(path, n, row, stem) for n, row in rows]
    return _indirect(directory / INDIRECT_ATTACKS, path, rows)


def _json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise CaseError(f"{path}:{number}: not JSON ({exc}); fix or remove the line") from exc
        if not isinstance(row, dict):
            raise CaseError(f"{path}:{number}: expected a JSON object per line")
        rows.append((number, row))
    return rows


def _text(path: Path, number: int, row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CaseError(f'{path}:{number}: needs a non-empty text field "{key}"')
    return value


def _qa(path: Path, number: int, row: dict[str, Any], stem: str) -> QaCase:
    truth = _text(path, number, row, "truth")
    pages = truth_pages(truth)
    if not pages:
        raise CaseError(
            f"{path}:{number}: the truth cites no page; end it with [FILE.pdf#page=N] or [FILE]"
        )
    return QaCase(f"{stem}:{number}", _text(path, number, row, "question"), truth, pages)


def _injection(path: Path, number: int, row: dict[str, Any], stem: str) -> InjectionCase:
    label = row.get("label")
    if label not in ("injection", "benign"):
        raise CaseError(f'{path}:{number}: "label" must be "injection" or "benign"')
    return InjectionCase(f"{stem}:{number}", _text(path, number, row, "text"), label)


def _staleness(path: Path, number: int, row: dict[str, Any], stem: str) -> StalenessCase:
    state, mode = row.get("state"), row.get("expected_mode")
    if state not in STALE_STATES:
        raise CaseError(f'{path}:{number}: "state" must be one of {", ".join(STALE_STATES)}')
    if mode not in MODES:
        raise CaseError(f'{path}:{number}: "expected_mode" must be one of {", ".join(MODES)}')
    return StalenessCase(
        id=f"{stem}:{number}",
        question=_text(path, number, row, "question"),
        source=_text(path, number, row, "source"),
        state=state,
        expected_mode=mode,
        disclaimer=str(row.get("disclaimer") or ""),
    )


def _indirect(
    attacks_path: Path, contexts_path: Path, rows: list[tuple[int, dict[str, Any]]]
) -> list[IndirectCase]:
    """One case per attack, each hidden in the next e-mail in turn."""
    if not attacks_path.is_file():
        raise CaseError(
            f"{contexts_path}: e-mail contexts need {attacks_path.name} beside them (the "
            "instructions to hide in them); add it or remove the contexts file"
        )
    try:
        by_category = json.loads(attacks_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CaseError(f"{attacks_path}: not JSON ({exc}); fix the file") from exc
    if not isinstance(by_category, dict) or not rows:
        raise CaseError(
            f"{attacks_path}: expected an object of category -> list of instructions, and "
            f"{contexts_path.name} at least one e-mail"
        )
    attacks = [
        (str(category), str(text))
        for category, texts in by_category.items()
        for text in (texts if isinstance(texts, list) else [])
    ]
    cases = []
    for n, (category, attack) in enumerate(attacks):
        number, row = rows[n % len(rows)]
        cases.append(
            IndirectCase(
                id=f"indirect-{n + 1:03d}",
                category=category,
                attack=attack,
                context=_text(contexts_path, number, row, "context"),
                question=_text(contexts_path, number, row, "question"),
                ideal=str(row.get("ideal") or ""),
            )
        )
    return cases
