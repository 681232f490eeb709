"""The rules of the screen: named regular expressions read from data/rules.yaml.

A rule names what an attack targets (the assistant's instructions, other customers' data),
never a trigger word alone; the table, its shared word lists and which rules apply to questions
and which to documents all live in the data file, versioned, so that a rule change is a data
change that a reviewer can read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import yaml

from freshkb.core.errors import ConfigError

RULES_FILE = "data/rules.yaml"
_FRAGMENT = re.compile(r"\$\{([A-Z_]+)\}")


@dataclass(frozen=True)
class RuleMatch:
    """One rule that fired, with the text that made it fire."""

    rule: str
    reason: str
    excerpt: str


@dataclass(frozen=True)
class InjectionRule:
    """A named pattern of text that signals an injection attempt."""

    name: str
    reason: str
    pattern: re.Pattern[str]

    def find(self, text: str) -> RuleMatch | None:
        """The match of this rule in text, if any."""
        found = self.pattern.search(text)
        if found is None:
            return None
        return RuleMatch(self.name, self.reason, found.group(0).strip()[:120])


@dataclass(frozen=True)
class RuleBook:
    """The rules for customer questions, the rules for documents, and which of those are weak.

    A weak document rule on its own only lowers the detector's bar for the passage it fired on.
    """

    version: int
    question_rules: tuple[InjectionRule, ...]
    document_rules: tuple[InjectionRule, ...]
    weak_document_rules: frozenset[str]


def match_rules(text: str, rules: Sequence[InjectionRule]) -> tuple[RuleMatch, ...]:
    """Every rule of `rules` that fires on text (one match per rule name)."""
    matches: dict[str, RuleMatch] = {}
    for rule in rules:
        if rule.name not in matches and (found := rule.find(text)):
            matches[rule.name] = found
    return tuple(matches.values())


@cache
def rules_digest() -> str:
    """sha256 of the rule table file: changes whenever a rule does."""
    return hashlib.sha256(files("freshkb.screening").joinpath(RULES_FILE).read_bytes()).hexdigest()


@cache
def load_rules() -> RuleBook:
    """The rule book of the package's data/rules.yaml (read and compiled once per process)."""
    table = yaml.safe_load(files("freshkb.screening").joinpath(RULES_FILE).read_text("utf-8"))
    return rule_book(table)


def rule_book(table: Mapping[str, Any]) -> RuleBook:
    """A rule book from a parsed rule table (see data/rules.yaml for its shape)."""
    fragments: dict[str, str] = {}
    for name, pieces in table["fragments"].items():
        fragments[name] = _expand(pieces, fragments, f"fragment {name}")
    rules = {
        rule_id: _compile(rule_id, spec, fragments) for rule_id, spec in table["rules"].items()
    }
    try:
        return RuleBook(
            version=int(table["version"]),
            question_rules=tuple(rules[r] for r in table["question_rules"]),
            document_rules=tuple(rules[r] for r in table["document_rules"]),
            weak_document_rules=frozenset(table["weak_document_rules"]),
        )
    except KeyError as exc:
        raise ConfigError(f"{RULES_FILE}: no rule {exc} is defined under `rules`") from exc


def _compile(rule_id: str, spec: Mapping[str, Any], fragments: Mapping[str, str]) -> InjectionRule:
    patterns = [_expand(p, fragments, f"rule {rule_id}") for p in spec["patterns"]]
    flags = 0 if spec.get("case_sensitive", False) else re.IGNORECASE
    return InjectionRule(
        spec["name"], spec["reason"], re.compile("|".join(f"(?:{p})" for p in patterns), flags)
    )


def _expand(pieces: str | list[str], fragments: Mapping[str, str], where: str) -> str:
    """A pattern written as one string or a list of pieces, with ${NAME} fragments filled in."""
    text = pieces if isinstance(pieces, str) else "".join(pieces)

    def fragment(found: re.Match[str]) -> str:
        if found.group(1) not in fragments:
            raise ConfigError(f"{RULES_FILE}: {where} uses ${{{found.group(1)}}}, defined nowhere")
        return fragments[found.group(1)]

    return _FRAGMENT.sub(fragment, text)
