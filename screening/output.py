"""The output screen: what an LLM answer may not say to a customer, whatever it cites.

Checks on plain strings (the answer, the passages it cites, every passage retrieved for this
customer, the question), with their rule tables in data/output.yaml: unsafe content; off-brand
tone (insults, blame, sarcasm, swearing, dismissals, shouting, competitors); promises the
policy does not make (a commitment such as refund, discount or free, or a figure such as $50,
30 days or 10%, that no cited passage contains, compared in normal form); personal data (phone,
e-mail, street address, card number, IBAN, SSN-like) that neither this customer's passages nor
the question contain, so it can only be someone else's.

What the passages say never counts against an answer: quoting them is the fallback. Unsafe
content escalates to a human when the question raises an unsafe topic too; every other finding
makes the answer service quote the passages instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any, Literal

import yaml

from freshkb.core.errors import ConfigError
from freshkb.core.text import normalise, without_list_markers

OUTPUT_RULES_FILE = "data/output.yaml"
Action = Literal["quote", "escalate"]
CHECKS = {
    "unsafe": "unsafe content",
    "tone": "off-brand tone",
    "promise": "promise not in the cited passages",
    "personal_data": "personal data not in this customer's passages",
}
# Citations as models write them ("[S1]", "[S1, S2]", "(S2)", "source 3"): labels, not figures.
_CITATION = re.compile(
    r"\[S\d+(?:\s*,\s*S\d+)*\]|\(S\d+\)|\b(?:source|passage)\s+S?\d+\b", re.IGNORECASE
)
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+")
_FRAGMENT = re.compile(r"\$\{([A-Z_]+)\}")
_CAPITAL_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019]*")
_NEGATION_WINDOW = 4  # words before a commitment that may negate it ("cannot be refunded")


@dataclass(frozen=True)
class OutputFinding:
    """One thing the answer may not say, and what to do instead."""

    check: str  # a key of CHECKS
    kind: str  # e.g. self_harm, insult, refund, figure, phone number
    evidence: str  # what fired, already shortened or masked; "" when unfit to repeat
    action: Action

    @property
    def reason(self) -> str:
        """The finding in words, e.g. "promise not in the cited passages (refund: 'refund')"."""
        kind = self.kind.replace("_", " ")
        if not self.evidence:
            return f"{CHECKS[self.check]} ({kind})"
        if self.evidence.lower() == kind:
            return f"{CHECKS[self.check]} ({self.evidence!r})"
        return f"{CHECKS[self.check]} ({kind}: {self.evidence!r})"


@dataclass(frozen=True)
class OutputVerdict:
    """Every finding of the screen on one answer; none means it may be served as written."""

    findings: tuple[OutputFinding, ...]

    @property
    def passed(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    @property
    def action(self) -> Literal["serve", "quote", "escalate"]:
        """Serve the answer, quote the passages instead, or hand the question to a human."""
        if not self.findings:
            return "serve"
        return "escalate" if any(f.action == "escalate" for f in self.findings) else "quote"

    @property
    def reason(self) -> str:
        """All findings in words, one per check and kind."""
        return "; ".join(f.reason for f in self.findings)


@dataclass(frozen=True)
class Figure:
    """A number as an answer states it: its value and unit (money, percent, day, ...)."""

    value: float
    unit: str | None
    written: str = ""  # as the text writes it, for the reason

    def matches(self, other: Figure) -> bool:
        """Same value, and the same unit unless one of them gives none."""
        same_unit = self.unit == other.unit or None in (self.unit, other.unit)
        return abs(self.value - other.value) < 1e-9 and same_unit


@dataclass(frozen=True)
class FigureReader:
    """Reads figures: digits with an optional currency and unit, number words before a unit."""

    digits: re.Pattern[str]
    words: re.Pattern[str]
    units: Mapping[str, re.Pattern[str]]
    number_words: Mapping[str, float]

    def read(self, text: str) -> list[Figure]:
        """Every figure of text."""
        found = []
        for match in self.digits.finditer(text):
            number = match["num"].replace(",", "")
            hours, _, minutes = number.partition(":")
            value = float(hours) + (float(minutes) / 60 if minutes else 0.0)
            unit = "money" if match["prefix"] else self._unit(match["unit"])
            found.append(Figure(value, unit, " ".join(match.group(0).split())))
        for match in self.words.finditer(text):
            word = " ".join(match["word"].lower().split())
            unit = self._unit(match["unit"])
            found.append(Figure(self.number_words[word], unit, " ".join(match.group(0).split())))
        return found

    def _unit(self, written: str | None) -> str | None:
        named = (name for name, p in self.units.items() if written and p.fullmatch(written))
        return next(named, None)


@dataclass(frozen=True)
class OutputRules:
    """The compiled tables of data/output.yaml."""

    version: int
    unsafe: Mapping[str, re.Pattern[str]]
    tone: Mapping[str, re.Pattern[str]]
    competitors: re.Pattern[str]
    acronyms: frozenset[str]
    shouting: tuple[int, int]  # capital words in a row that shout, letters in such a word
    commitments: Mapping[str, re.Pattern[str]]
    negations: frozenset[str]
    figures: FigureReader
    personal: Mapping[str, re.Pattern[str]]
    phone_digits: tuple[int, int]


class OutputScreen:
    """Screens an LLM answer against the passages it rests on; see the module docstring."""

    def __init__(self, rules: OutputRules):
        self.rules = rules

    def screen(
        self,
        answer: str,
        cited: Sequence[str],
        retrieved: Sequence[str] = (),
        question: str = "",
    ) -> OutputVerdict:
        """The verdict on an answer; `cited` are the passages it cites, `retrieved` every
        passage this customer's answer was written from (cited ones included)."""
        text = _CITATION.sub("", normalise(answer))
        cited_text = normalise("\n".join(cited or retrieved))
        passages = normalise("\n".join([*retrieved, *cited]))
        spans, personal = self._personal_data(text, f"{passages}\n{normalise(question)}")
        findings = [
            *self._unsafe(text, passages, question),
            *self._tone(text, passages),
            *self._commitments(text, cited_text),
            *self._figures(_blank(text, spans), cited_text, question),
            *personal,
        ]
        unique: dict[tuple[str, str], OutputFinding] = {}
        for finding in findings:
            unique.setdefault((finding.check, finding.kind), finding)
        return OutputVerdict(tuple(unique.values()))

    def _unsafe(self, text: str, known: str, question: str) -> Iterable[OutputFinding]:
        raised = any(p.search(normalise(question)) for p in self.rules.unsafe.values())
        action: Action = "escalate" if raised else "quote"
        for kind, pattern in self.rules.unsafe.items():
            if _unknown_phrases(pattern, text, known):
                yield OutputFinding("unsafe", kind, "", action)

    def _tone(self, text: str, known: str) -> Iterable[OutputFinding]:
        for kind, pattern in self.rules.tone.items():
            phrases = _unknown_phrases(pattern, text, known)
            if phrases:
                evidence = "" if kind == "profanity" else phrases[0][:60]
                yield OutputFinding("tone", kind, evidence, "quote")
        names = _unknown_phrases(self.rules.competitors, text, known)
        if names:
            yield OutputFinding("tone", "competitor", names[0], "quote")
        shouted = self._shouting(text, known)
        if shouted:
            yield OutputFinding("tone", "shouting", shouted, "quote")

    def _shouting(self, text: str, known: str) -> str | None:
        """The first run of words in capitals that is no acronym and no quote, or '!!'."""
        if "!!" in text and "!!" not in known:
            return "!!"
        run: list[str] = []
        for word in [*_CAPITAL_WORD.findall(text), ""]:
            letters = re.sub(r"[^A-Za-z]", "", word)
            shouted = (
                len(letters) >= self.rules.shouting[1]
                and letters.isupper()
                and letters not in self.rules.acronyms
                and not re.search(rf"\b{re.escape(word)}\b", known)
            )
            if shouted:
                run.append(word)
                continue
            if len(run) >= self.rules.shouting[0]:
                return " ".join(run[:4])
            run = []
        return None

    def _commitments(self, text: str, cited: str) -> Iterable[OutputFinding]:
        for concept, pattern in self.rules.commitments.items():
            if pattern.search(cited):
                continue
            for match in pattern.finditer(text):
                sentence = re.split(r"[.!?\n]", text[: match.start()])[-1]
                before = re.findall(r"[a-z']+", sentence.lower())
                if not self.rules.negations & set(before[-_NEGATION_WINDOW:]):
                    yield OutputFinding("promise", concept, match.group(0)[:40], "quote")
                    break

    def _figures(self, text: str, cited: str, question: str) -> Iterable[OutputFinding]:
        reader = self.rules.figures
        text = without_list_markers(_URL.sub(" ", text))
        supported = reader.read(cited) + reader.read(normalise(question))
        for figure in reader.read(text):
            if not any(figure.matches(known) for known in supported):
                yield OutputFinding("promise", "figure", figure.written, "quote")
                return

    def _personal_data(
        self, text: str, known: str
    ) -> tuple[list[tuple[int, int]], list[OutputFinding]]:
        """Where personal data stands in text, and the data that is not this customer's own."""
        claimed: list[tuple[int, int]] = []
        found: list[OutputFinding] = []
        for kind, pattern in self.rules.personal.items():
            for match in pattern.finditer(text):
                span = match.span()
                if any(s < span[1] and span[0] < e for s, e in claimed):
                    continue
                value = match.group(0).strip()
                if not self._valid(kind, value):
                    continue
                claimed.append(span)
                if not _known_value(kind, value, known):
                    found.append(OutputFinding("personal_data", kind, _mask(kind, value), "quote"))
        return claimed, found

    def _valid(self, kind: str, value: str) -> bool:
        digits = re.sub(r"\D", "", value)
        if kind == "card number":
            return 13 <= len(digits) <= 19 and luhn_valid(digits)
        if kind == "IBAN":
            return iban_valid(value)
        if kind == "phone number":
            low, high = self.rules.phone_digits
            return low <= len(digits) <= high
        return True


def luhn_valid(digits: str) -> bool:
    """True when a string of digits passes the Luhn check of payment card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def iban_valid(value: str) -> bool:
    """True when an IBAN (spaces allowed) passes its ISO 13616 mod-97 check."""
    compact = re.sub(r"\s", "", value).upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _unknown_phrases(pattern: re.Pattern[str], text: str, known: str) -> list[str]:
    """The matches of pattern in text that the known text does not itself contain."""
    folded = " ".join(known.lower().split())
    phrases = (" ".join(m.group(0).split()) for m in pattern.finditer(text))
    return [p for p in phrases if p and p.lower() not in folded]


def _known_value(kind: str, value: str, known: str) -> bool:
    """Whether the known text (this customer's passages and question) holds the value."""
    if kind == "email":
        return value.lower() in known.lower()
    if kind == "street address":  # "101 Pine St." is the record's "101 Pine Street"
        tokens = re.findall(r"\w+", value.lower())[:2]
        return bool(re.search(r"\b" + r"\W+".join(map(re.escape, tokens)) + r"\b", known.lower()))
    if kind == "IBAN":
        return re.sub(r"\s", "", value).upper() in re.sub(r"\s", "", known).upper()
    digits = re.sub(r"\D", "", value)
    tail = digits[-9:] if kind == "phone number" else digits
    numbers = re.findall(r"\+?\d[\d\s().+/-]*\d", known)
    return any(tail in re.sub(r"\D", "", number) for number in numbers)


def _mask(kind: str, value: str) -> str:
    """Enough of a value to find it again, never the value: an address's domain, a number's
    last two digits, nothing of a street address."""
    if kind == "email":
        return value[0] + "\u2026@" + value.rpartition("@")[2]
    if kind == "street address":
        return ""
    return "\u2026" + re.sub(r"[\s()./-]", "", value)[-2:]


def _blank(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """Text with the spans replaced by spaces (so their digits are not read as figures)."""
    return "".join(" " if any(s <= i < e for s, e in spans) else c for i, c in enumerate(text))


@cache
def load_output_screen() -> OutputScreen:
    """The screen of the package's data/output.yaml (read and compiled once per process)."""
    raw = files("freshkb.screening").joinpath(OUTPUT_RULES_FILE).read_text("utf-8")
    return OutputScreen(output_rules(yaml.safe_load(raw)))


def screen_answer(
    answer: str, cited: Sequence[str], retrieved: Sequence[str] = (), question: str = ""
) -> OutputVerdict:
    """The package screen's verdict on an answer; see `OutputScreen.screen`."""
    return load_output_screen().screen(answer, cited, retrieved, question)


def output_rules(table: Mapping[str, Any]) -> OutputRules:
    """Compiled rules from a parsed data/output.yaml table."""
    try:
        fragments = {name: _joined(p) for name, p in table["fragments"].items()}
        figures, shouting = table["figures"], table["shouting"]
        names = "|".join(table["competitors"]["names"])
        return OutputRules(
            version=int(table["version"]),
            unsafe=_table(table["unsafe"], fragments),
            tone=_table(table["tone"], fragments),
            competitors=re.compile(rf"(?<![\w'])(?:{names})(?![\w'])"),
            acronyms=frozenset(str(a) for a in shouting["acronyms"]),
            shouting=(int(shouting["min_run"]), int(shouting["min_letters"])),
            commitments=_table(table["commitments"], fragments),
            negations=frozenset(table["negations"]),
            figures=_figure_reader(figures),
            personal=_table(table["personal_data"], fragments),
            phone_digits=(int(table["phone_digits"]["min"]), int(table["phone_digits"]["max"])),
        )
    except (KeyError, TypeError, re.error) as exc:
        raise ConfigError(f"{OUTPUT_RULES_FILE}: malformed rule table ({exc!r})") from exc


def _figure_reader(spec: Mapping[str, Any]) -> FigureReader:
    units = {name: re.compile("|".join(forms), re.I) for name, forms in spec["units"].items()}
    unit = "|".join(f"(?:{form})" for forms in spec["units"].values() for form in forms)
    prefix = "|".join(spec["money_prefixes"])
    words = {str(w): float(v) for w, v in spec["number_words"].items()}
    spelled = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len)[::-1])
    return FigureReader(
        digits=re.compile(
            rf"(?P<prefix>{prefix})?(?<![\w.,:])(?P<num>\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?"
            rf"|\d+(?:[.:]\d+)?)(?:\s*-?\s*(?P<unit>{unit})(?![a-z]))?",
            re.I,
        ),
        words=re.compile(rf"\b(?P<word>{spelled})[\s-]+(?P<unit>{unit})(?![a-z])", re.I),
        units=units,
        number_words=words,
    )


def _table(spec: Mapping[str, Any], fragments: Mapping[str, str]) -> dict[str, re.Pattern[str]]:
    """Named patterns: a list of patterns, or {patterns, case_sensitive}, per name."""
    compiled = {}
    for name, entry in spec.items():
        patterns = entry["patterns"] if isinstance(entry, Mapping) else entry
        sensitive = isinstance(entry, Mapping) and entry.get("case_sensitive", False)
        expanded = [_FRAGMENT.sub(lambda m: fragments[m.group(1)], _joined(p)) for p in patterns]
        compiled[name] = re.compile(
            "|".join(f"(?:{p})" for p in expanded), 0 if sensitive else re.IGNORECASE
        )
    return compiled


def _joined(pieces: str | list[str]) -> str:
    return pieces if isinstance(pieces, str) else "".join(pieces)
