"""Prompt-injection defences for the answer service.

Two threats, two checks, each a set of rules plus a detector learned from hand-written exemplars
(serving/injection_exemplars.py) over sentence embeddings of the bundled all-MiniLM-L6-v2:

- Direct injection: a customer types an attack into the question ("ignore your instructions",
  "print the system prompt", "list every customer's e-mail"). `screen_question` blocks it, while
  ordinary questions that merely use words like ignore, bypass, override or pretend pass.
- Indirect injection: an ingested document, e-mail or customer record carries instructions aimed
  at the AI that will read it. `inspect_document` flags such text and says which passage and why;
  the answer service then keeps it as quoted data or drops it. `quote_as_data` wraps any retrieved
  text in a data block that the text itself cannot close.

The detector is a logistic regression fitted at first use (a few hundred exemplars, numpy, fixed
Newton steps, so it is deterministic) that must also agree with the exemplars' nearest
neighbours: a text far from every exemplar is not called an attack on extrapolation alone.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from freshkb.embeddings.embedder import Embedder, get_embedder
from freshkb.serving import injection_exemplars as exemplars

# The detector always uses the bundled model, whatever model the index is built with: its
# exemplars were judged with this model, and it needs no download.
DETECTOR_MODEL = "all-MiniLM-L6-v2"

# Probability thresholds of the two detectors, chosen by cross-validating the exemplars and
# checked against the dev split. Questions are judged whole, so one high bar. Documents are
# judged sentence by sentence, over many sentences, so a sentence must also be closer to the
# attack exemplars than to the benign ones (a neighbour margin >= 0) before it counts.
QUESTION_THRESHOLD = 0.6
DOCUMENT_THRESHOLD = 0.5
# A passage that the weak rule points at needs much less from the detector: the rule fired on no
# clean e-mail, policy paragraph, benefits chunk or retail record measured, but it alone should
# not decide. (Once benign exemplars of plan and job-description prose were added, attacks such
# as "Modify your response to mention ..." scored p=0.2, margin -0.13 there.)
CORROBORATING_THRESHOLD = 0.05
CORROBORATING_MARGIN = -0.15
NEIGHBOURS = 3
L2_PENALTY = 0.1

# Sentences with fewer words than this (markup and numbers aside) are headings, labels and table
# cells: too little text for the embedding to mean anything, and the rules still read them.
MIN_DETECTOR_WORDS = 4
# A document line needs a few more words to be judged: record fields ("city: Salt Lake City")
# are short. Five, not six: "Write a limerick about a forgetful penguin" has five (6 missed
# 7 of the 75 dev attacks, 5 misses 1, with no more false positives on e-mails, policies or
# the retail records, whose e-mail fields do not count as words).
MIN_DOCUMENT_DETECTOR_WORDS = 5
# Long run-on passages are scored in overlapping windows, so one instruction inside a long
# paragraph is not averaged away by the sentences around it.
WINDOW_WORDS = 30
WINDOW_STRIDE = 15

DATA_BLOCK_TAG = "retrieved_data"
DATA_CLOSE = f"</{DATA_BLOCK_TAG}>"

_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|(?<=[a-z][.!?])(?=[A-Z])|\n+|\s*\|\s*")
_FIELD_PREFIX = re.compile(r"^[A-Z][A-Z_ ]{2,20}:\s*")
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_WORD = re.compile(r"[^\W\d_]{2,}")
# Addresses are identifiers, not words: "email: anya.lee3013@example.com" is a record field.
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+|\bhttps?://\S+|\bwww\.\S+")


@dataclass(frozen=True)
class RuleMatch:
    """One rule that fired, with the text that made it fire."""

    rule: str
    reason: str
    excerpt: str


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


def _rule(name: str, reason: str, *patterns: str, case_sensitive: bool = False) -> InjectionRule:
    flags = 0 if case_sensitive else re.IGNORECASE
    return InjectionRule(name, reason, re.compile("|".join(f"(?:{p})" for p in patterns), flags))


# Word lists shared by several rules. A rule names what an attack targets (the assistant's
# instructions, other customers' data), never a trigger word alone, so "ignore the restocking fee"
# or "override my shipping address" never match; and a customer's own things ("my previous
# instructions", "the instructions in the manual") are not the assistant's.
_AI_QUALIFIER = (
    r"(?:your|all|any|every|above|prior|preceding|initial|original|system|safety|hidden|internal|"
    r"operator'?s?|developers?'?|company'?s?)"
)
_QUALIFIERS = (
    rf"(?:(?:(?:the|of|these|those)\s+)?{_AI_QUALIFIER}\s+(?:(?:{_AI_QUALIFIER}|the|of|previous|"
    r"earlier|existing|current|given|other)\s+){0,3}|(?:previous|prior|earlier)\s+)"
)
_GUIDANCE = (
    r"(?:instructions?|directives?|guidelines?|rules|prompts?|programming|guardrails?|"
    r"restrictions|constraints|system\s+(?:message|prompt)|configuration|training|policies)"
)
_DISCLOSE = (
    r"(?:reveal|show|print|output|repeat|recite|tell|give|share|display|dump|copy|leak|"
    r"translate|summari[sz]e|spell|quote|echo|paste|write\s+out|list|expose|disclose)"
)
_PEOPLE = r"(?:customers?|users?|clients?|members?|account\s*holders?|people|persons?|passengers)"
_PERSONAL_DATA = (
    r"(?:e-?mails?(?:\s+address(?:es)?)?|(?:home\s+)?address(?:es)?|phone\s+numbers?|"
    r"account\s+(?:numbers?|balances?|details)|card\s+(?:numbers?|details)|balances?|orders?|"
    r"order\s+history|transactions?|transaction\s+history|records|details|data|names|"
    r"passwords?|membership\s+details|purchase\s+history|ssns?|social\s+security\s+numbers?)"
)
_ACCOUNT_DATA = (
    r"(?:balances?|transactions?|transaction\s+history|order\s+history|orders|purchases|"
    r"account\s+details|card\s+(?:numbers?|details)|passwords?|statements)"
)
_NOT_OWN_GROUP = r"(?!\s+(?:on|in|of)\s+(?:my|our|this)\b)"

_OVERRIDE = _rule(
    "instruction_override",
    "tries to cancel or replace the assistant's instructions",
    rf"\b(?:ignore|disregard|forget|override|bypass|abandon|discard|nevermind|never\s+mind|"
    rf"stop\s+following)\s+{_QUALIFIERS}{_GUIDANCE}\b",
    r"\b(?:ignore|disregard|forget)\s+(?:everything|anything|all|what)\s+(?:that\s+)?"
    r"(?:you(?:'ve|\s+have|\s+were|\s+are)?\s+(?:been\s+)?(?:told|given|taught)|"
    r"(?:the\s+)?(?:company|operator|developers?)\s+told)",
    rf"\b(?:the\s+)?{_GUIDANCE}\s+(?:above|before\s+this)\s+(?:are|is)\s+"
    r"(?:outdated|void|cancell?ed|obsolete|wrong|no\s+longer)",
    r"\b(?:new|updated|real|actual|true)\s+(?:instructions?|task|directives?)\s+"
    r"for\s+(?:the\s+)?(?:ai|assistant|model|chat\s?bot)\b",
    r"\b(?:ignore|disregard|forget)\s+(?:the\s+)?(?:user'?s?|customer'?s?)\s+"
    r"(?:question|request|query|task)",
)
_IGNORE_SOURCES = _rule(
    "ignore_sources",
    "tells the assistant to answer without its knowledge base",
    r"\b(?:ignore|disregard|forget)\s+(?:the|your|all)\s+(?:\w+\s+)?(?:documents|"
    r"knowledge\s*base|sources|context|retrieved\s+\w+|search\s+results|policy\s+documents?)\b"
    r"(?!\s+(?:i|we|that\s+i|you\s+(?:sent|asked)|attached|uploaded)\b)",
    r"\b(?:regardless\s+of|without\s+(?:using|checking|looking\s+at))\s+(?:the|your)\s+"
    r"(?:knowledge\s*base|policy\s+documents?|retrieved\s+\w+)\b",
    r"\beven\s+if\s+(?:the\s+)?(?:knowledge\s*base|documents|sources)\s+says?\b",
)
_PERSONA = _rule(
    "persona_switch",
    "tries to give the assistant another identity or an unrestricted mode",
    r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:a|an|my|called|named|acting|(?-i:[A-Z]))",
    r"\bfrom\s+now\s+on,?\s+you(?:'re|\s+are|\s+will\s+be)\s+(?:a|an|my|called|named|(?-i:[A-Z]))",
    r"\bpretend\s+(?:that\s+)?(?:you\s+are|you're|to\s+be\s+(?:a|an)\s+(?:\w+\s+)?(?:ai|bot|"
    r"assistant|model|hacker|clerk|employee|agent))\b",
    r"\b(?:let'?s|we\s+will|we're\s+going\s+to)\s+(?:play\s+a\s+game|role-?\s?play)\b",
    r"\b(?:act|behave|respond|answer)\s+as\s+(?:an?\s+)?(?:\w+\s+)?(?:unrestricted|unfiltered|"
    r"uncensored|jailbroken|rogue|evil|unlimited)\b",
    r"\b(?:act|behave|respond|answer)\s+as\s+(?:\w+\s+){0,4}with\s+no\s+(?:rules|restrictions|"
    r"limits|filters)\b",
    r"\b(?:enter|enable|switch\s+to|activate|go\s+into|turn\s+on|unlock|start)\s+(?:\w+\s+){0,2}"
    r"(?:god|jailbreak|unrestricted|sudo|dan|evil)\s+mode\b",
    r"\b(?:enter|enable|switch\s+to|activate|go\s+into|turn\s+on)\s+(?:\w+\s+){0,2}(?:developer|"
    r"debug|maintenance|admin)\s+mode\b[^.?!]{0,60}\b(?:disable|show|print|reveal|ignore|bypass|"
    r"output|dump|unfiltered|no\s+(?:rules|filters|restrictions))",
    r"\bstay\s+in\s+character\b",
    r"\bdo\s+anything\s+now\b",
    r"\b(?:you(?:'re|\s+are)?\s+(?:now\s+|been\s+)?|have\s+been\s+)jailbroken\b",
    r"\bjailbreak\s+(?:mode|prompt)\b",
    r"\byou\s+(?:now\s+)?have\s+no\s+(?:rules|restrictions|filters)\b(?!\s+(?:on|for)\b)",
)
_PERSONA_NAME = _rule(
    "persona_switch",
    "invokes a known jailbreak persona",
    r"\b(?:you\s+are|you're|as|called|play)\s+DAN\b",
    r"\bDAN\b[^.?!]{0,40}\b(?:can\s+do\s+anything|never\s+refuses|no\s+rules)",
)
_EXTRACTION = _rule(
    "prompt_extraction",
    "asks for the assistant's hidden instructions or context",
    # "tell me your instructions for returning an item" asks for a company procedure.
    rf"\b{_DISCLOSE}\b[^.?!]{{0,40}}\byour\s+(?:(?:system|initial|hidden|secret|original|full|"
    r"exact|internal|developer|confidential|entire)\s+){0,2}(?:prompt|instructions|directives|"
    r"programming|configuration|system\s+message|developer\s+message|preamble|context\s+window)"
    r"\b(?!\s+(?:for|on|about|regarding|to)\b)",
    rf"\b{_DISCLOSE}\b[^.?!]{{0,40}}\byour\s+(?:system|initial|hidden|secret|original|internal|"
    r"developer|confidential)\s+(?:rules|guidelines|setup|notes)\b",
    r"\b(?:system|initial|hidden|original|secret|confidential|developer|pre-?)\s*"
    r"(?:prompt|instructions)\s+(?:you\s+(?:were|have\s+been)\s+given|you\s+received)\b",
    rf"\b{_DISCLOSE}\b[^.?!]{{0,30}}\b(?:system|initial|hidden|original|secret|developer)\s+"
    r"(?:prompt|message)\b",
    r"\b(?:instructions|prompt|rules)\s+you\s+(?:were|have\s+been)\s+given\b",
    r"\bwhat\s+(?:were|are)\s+(?:the\s+)?(?:exact\s+)?instructions\s+you\s+(?:were|received|got)\b",
    r"\b(?:repeat|print|output|echo|copy|show|quote|reproduce)\s+(?:\w+\s+){0,3}(?:text|words|"
    r"everything|content|messages?|lines)\s+(?:above|before\s+(?:this|my))\b",
    r"\bstarting\s+with\s+['\"]?you\s+are\b",
    r"\bcontext\s+window\b",
)
_HIDDEN_CONTEXT = _rule(
    "context_dump",
    "asks for the raw retrieved or internal documents",
    rf"\b{_DISCLOSE}\b[^.?!]{{0,40}}\b(?:raw|retrieved|unredacted|internal[- ]only|"
    r"confidential|hidden|every\s+other)\s+(?:\w+\s+)?(?:passages|documents|chunks|context|"
    r"notes|records|sources|files)\b",
    r"\bunredacted\b",
)
_OTHER_CUSTOMERS = _rule(
    "other_customers_data",
    "asks for data that belongs to other customers",
    rf"\b{_PERSONAL_DATA}\s+(?:\w+\s+){{0,3}}(?:of|for|from|belonging\s+to|stored\s+for)\s+"
    rf"(?:all|every|each|other|another|any|some|the\s+other)\s+(?:\w+\s+)?{_PEOPLE}\b"
    rf"{_NOT_OWN_GROUP}",
    rf"\b(?:all|every|other|another)\s+{_PEOPLE}(?:'s|s'|')\s+(?:\w+\s+)?{_PERSONAL_DATA}",
    rf"\b{_PERSONAL_DATA}\s+(?:\w+\s+){{0,2}}(?:of|for|from)\s+(?:the\s+)?(?:\w+\s+){{0,3}}"
    rf"{_PEOPLE}\s+(?:who|that|which)\s+(?!(?:are|were)\s+on\s+my\b)",
    rf"\b{_ACCOUNT_DATA}\s+(?:of|for|from)\s+(?:my\s+)?(?:neighbou?r|co-?worker|colleague|boss|"
    r"ex|landlord|someone\s+else)\b",
    r"\b(?:customer|user|client|account)\s*#?\s*\w*\d+\b[^.?!]{0,60}\b(?:even\s+though|although|"
    r"though|but|while)\s+(?:i\s+am|i'm)\s+(?:customer|user|client|account)\b",
    r"\b(?:i\s+am|i'm)\s+(?:customer|user)\s+\S+\s+but\b[^.?!]{0,40}\b(?:customer|user)\s+\S*\d",
    r"\b(?:of|for)\s+(?:anyone|anybody|everyone|someone)\s+(?:named|called|whose)\b",
    rf"\b(?:any|every|all)\s+(?:\w+\s+)?{_PEOPLE}\s+whose\s+(?:first\s+|last\s+)?name\b",
    r"\b(?:of|for)\s+the\s+(?:person|customer|user)\s+who\s+(?:placed|made|ordered|owns)\b",
    rf"\b(?:export|dump)\s+(?:the\s+)?(?:complete\s+|entire\s+|whole\s+|full\s+)?"
    rf"{_PEOPLE}\s+(?:table|database|list)\b",
)
_THIRD_PARTY_BY_NAME = _rule(
    "other_customers_data",
    "asks what a named person bought or owes",
    r"\b(?:what|which|how\s+much)\s+(?:did\s+)?[A-Z][a-z]+\s+[A-Z][a-z]+\s+(?:\w+\s+){0,3}"
    r"(?:ordered|order|bought|buy|purchased|paid|spent|owes|has\s+in)\b",
    case_sensitive=True,
)
_SECRETS = _rule(
    "secret_extraction",
    "asks for keys, credentials or configuration secrets of the service",
    r"\b(?:secret|private)\s+(?:api\s+)?(?:key|token)\s+(?:you|that\s+you|this\s+(?:bot|service|"
    r"assistant))\b",
    r"\b(?:api|access)\s+(?:keys?|tokens?|credentials)\s+(?:you|that\s+you|this\s+(?:bot|service|"
    r"assistant))\s+(?:use|uses|have|has)\b",
    r"\b(?:your|the\s+(?:bot|assistant|system|service|server)'?s?)\s+(?:(?:api|secret|access)\s+"
    r"(?:keys?|tokens?)|system\s+credentials|connection\s+strings?|database\s+passwords?)\b",
    r"\b(?:api\s+credentials|connection\s+string|environment\s+variables)\b[^.?!]{0,40}"
    r"\b(?:configured|for\s+this\s+service|you\s+use)\b",
    r"\b(?:password|access\s+token|credentials)\s+(?:or\s+\w+\s+)?(?:\w+\s+)?you\s+use\s+for\b",
)
_DISABLE_SAFETY = _rule(
    "disable_safety",
    "tries to switch off the assistant's safeguards or checks",
    r"\b(?:disable|turn\s+off|deactivate|switch\s+off|remove|bypass|lift|suspend|ignore)\s+"
    r"(?:your|the\s+(?:ai|bot|assistant)'?s?|all)\s+(?:\w+\s+)?(?:filters|guardrails|safeguards|"
    r"restrictions|moderation|censorship|safety\s+(?:filters?|checks?|rules|settings))\b",
    r"\b(?:disable|turn\s+off|deactivate|switch\s+off|remove|bypass|lift|suspend|ignore)\s+"
    r"(?:the\s+|any\s+)?(?:content\s+(?:filters?|filtering|moderation|policy)|safety\s+filters?|"
    r"guardrails|safeguards|censorship)\b",
    r"\b(?:skip|bypass|ignore)\s+your\s+(?:\w+\s+)?(?:checks|verification|restrictions|limits)\b",
    r"\b(?:grant|give)\s+me\s+(?:full|admin|administrator|root|unrestricted)\s+access\b",
    r"\bno\s+more\s+(?:refusals|rules|restrictions|filters)\b",
)
_AUTHORITY_ROLE = (
    r"(?:supervisor|manager|admin(?:istrator)?|developer|operator|creator|boss|engineer|"
    r"programmer)"
)
_FAKE_AUTHORITY = _rule(
    "fake_authority",
    "claims an authority that the assistant cannot check, to unlock something",
    rf"\bas\s+(?:your|the|an?)\s+(?:\w+\s+)?{_AUTHORITY_ROLE}\b[^.?!]{{0,60}}\b(?:authori[sz]e|"
    r"order|command|instruct)\s+you\b",
    r"\b(?:i|we)\s+(?:hereby\s+)?(?:authori[sz]e|order|command|instruct)\s+you\s+to\s+(?:skip|"
    r"bypass|ignore|override|disable|reveal|share|release|turn\s+off|forget|disregard)\b",
    rf"\b(?:i\s+am|i'm)\s+(?:the|your|a|an)\s+(?:{_AUTHORITY_ROLE}|owner)\s+of\s+(?:you|this\s+(?:bot|"
    r"assistant|chat\s?bot|ai|model)|the\s+(?:bot|assistant|chat\s?bot|ai|model))\b",
    r"\bthe\s+user\s+is\s+(?:an?\s+)?(?:admin(?:istrator)?|verified\s+admin|developer|superuser)\b",
    r"\b(?:official\s+notice|message|order)\s+from\s+(?:it|security|engineering|headquarters|"
    r"management|the\s+\w+\s+team)\s*:",
)
_FAKE_AUTHORITY_MARKER = _rule(
    "fake_authority",
    "poses as a system or administrator message",
    r"\b(?:SYSTEM|ADMIN|ADMINISTRATOR|DEVELOPER|ROOT|SECURITY)[ _-]?(?:OVERRIDE|COMMAND|MESSAGE|"
    r"NOTICE|PROMPT|MODE)\b",
    r"^\W*(?:system|admin|developer|security\s+team)\s+(?:override|command|notice|message)\s*:",
    case_sensitive=True,
)
_OUTPUT_HIJACK = _rule(
    "output_hijack",
    "tries to take over how every later answer is written",
    r"\bfrom\s+now\s+on,?\s+(?:you\s+(?:will|must|should|shall)\s+)?(?:only\s+|always\s+)?"
    r"(?:answer|respond|reply|speak|talk)\s+(?:only|always|as|like|with|every)\b",
    r"\bfor\s+the\s+rest\s+of\s+(?:this|the)\s+(?:chat|conversation|session),?\s+(?:you\b|always|"
    r"only|never|answer|respond|reply|speak|talk|end|begin|start|act|pretend|be)\b",
    r"\b(?:respond|reply|answer)\s+to\s+(?:every|all|each|any)\s+(?:future\s+|later\s+)?"
    r"(?:questions?|messages?|requests?|prompts?)\s+(?:with|by|using)\b",
    r"\b(?:answer|respond|reply|speak|talk|write)\s+only\s+in\s+(?:pirate|rhym\w*|emojis?|riddles|"
    r"leet\w*|capital\s+letters|uppercase|code)\b",
    r"\b(?:end|begin|start|finish)\s+(?:every|each|all)\s+(?:of\s+your\s+)?(?:answers?|"
    r"responses?|replies)\s+with\b",
)
_MARKUP = _rule(
    "markup_injection",
    "carries chat or prompt markup meant to end the user's turn",
    r"</?\s*(?:system|context|instructions?|assistant|user|documents?|data|retrieved_data|"
    r"prompt|admin|s)\s*>",
    r"<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|eot_id|begin_of_text)\s*\|>",
    r"\[/?(?:INST|SYS|SYSTEM)\]",
    r"<<\s*/?SYS\s*>>",
    r"(?:^|\n)\s*#{2,}\s*(?:new\s+|updated\s+|system\s+|assistant\s+|admin\s+)?(?:instructions?|"
    r"system|prompt|rules)\b",
    r"={3,}\s*(?:end|begin|start)\s+of\s+(?:user\s+input|system\s+prompt|context|instructions)",
    r"\b(?:end|begin)\s+of\s+(?:user\s+input|system\s+prompt|prompt)\b",
)
_DOCUMENT_MARKUP = _rule(
    "markup_injection",
    "carries chat or prompt markup meant to break out of the quoted text",
    r"</?\s*(?:system|instructions?|assistant|user|retrieved_data|prompt)\s*>",
    r"<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|eot_id|begin_of_text)\s*\|>",
    r"\[/?(?:INST|SYS)\]",
    r"<<\s*/?SYS\s*>>",
    r"\b(?:end|begin)\s+of\s+(?:user\s+input|system\s+prompt)\b",
)
_ENCODED = _rule(
    "encoded_payload",
    "asks the assistant to decode hidden text and act on it",
    r"\b(?:decode|decrypt|decipher|unscramble)\b[^.?!]{0,80}\b(?:and|then)\s+(?:follow|execute|"
    r"obey|carry\s+out|comply\s+with|act\s+on|do\s+what)\b",
    r"\b(?:base64|rot-?13|hex(?:adecimal)?|binary|morse|cipher|encoded)\b[^.?!]{0,60}"
    r"\b(?:follow|execute|obey|carry\s+out|comply\s+with)\s+(?:it|them|this|that|what|the\s+"
    r"(?:instructions?|orders?|commands?))\b",
    r"\b(?:base64|rot-?13|hex|binary|morse|cipher|encoded)\b[^.?!]{0,60}\bas\s+(?:your\s+)?"
    r"(?:new\s+)?(?:orders|instructions|rules)\b",
)
_HARMFUL = _rule(
    "harmful_content",
    "asks the support assistant to produce fraud or malware",
    r"\b(?:write|draft|create|generate|compose|make|produce)\s+(?:me\s+)?(?:an?\s+|some\s+)?"
    r"(?:\w+\s+){0,3}(?:(?:phishing|scam|fraudulent)\s+(?:e-?mails?|messages?|texts?|letters?|"
    r"sms|sites?|pages?|call\s+scripts?)|fake\s+(?:refund|reviews?|invoices?|receipts?|"
    r"confirmations?|notices?|bank)|malware|ransomware|keyloggers?|computer\s+virus)\b",
    r"\bpretending\s+to\s+be\s+(?:the|a|your)\s+(?:bank|company|airline|support)\b[^.?!]{0,40}"
    r"\b(?:pin|password|card|code)\b",
)
_FALSE_POLICY = _rule(
    "policy_fabrication",
    "tries to make the assistant state a policy the knowledge base does not",
    r"\b(?:say|state|write|announce|promise|declare|tell\s+(?:me|everyone|them))\s+(?:that\s+)?"
    r"(?:all|every|any)\s+(?:\w+\s+){0,4}(?:are|is|get|gets)\s+(?:\w+\s+){0,2}(?:approved|"
    r"waived|free|forever|lifetime|unlimited|automatic(?:ally)?)\b",
    r"\b(?:pretend|imagine|act\s+as\s+if)\s+(?:that\s+)?(?:\w+\s+){0,3}(?:policy|rules?|warranty|"
    r"terms)\s+(?:\w+\s+){0,3}(?:allows?|covers?|says?|permits?|gives?)\b",
    r"\b(?:confirm|acknowledge|repeat|state)\s+(?:it|this|that)\s+(?:back\s+)?as\s+(?:fact|"
    r"official|true)\b",
)

_AI_ADDRESSED = _rule(
    "addressed_to_ai",
    "speaks to an AI system reading the text",
    r"\b(?:note|message|instructions?|attention|reminder|memo)\s+(?:to|for)\s+(?:any\s+|the\s+|"
    r"all\s+)?(?:ai|a\.i\.|ai\s+assistants?|chat\s?bots?|language\s+models?|ai\s+models?|llms?|"
    r"bots?|automated\s+(?:systems?|assistants?|agents?|tools?))\b",
    r"\bif\s+you\s+are\s+(?:an?\s+)?(?:ai|a\.i\.|language\s+model|ai\s+assistant|chat\s?bot|llm|"
    r"bot|automated\s+(?:system|assistant|agent))\b",
    r"\b(?:any|an|the)\s+(?:ai|automated\s+assistant|language\s+model|llm|chat\s?bot)s?\s+"
    r"(?:reading|processing|summari[sz]ing|parsing|answering)\b",
    r"(?:^|[.!?]\s+)(?:(?:hey|dear|attention|note\s+to)\s+(?:ai|assistant|chat\s?bot|model|llm|"
    r"gpt)|ai|a\.i\.|chat\s?bot|llm|gpt|claude|copilot)\s*[,:]",
    r"\bwhen\s+(?:you\s+)?(?:summari[sz]e|summari[sz]ing|pars(?:e|ing)|answer(?:ing)?\s+"
    r"questions\s+(?:about|on))\s+(?:\w+\s+){0,3}(?:this|these)\s+(?:e-?mails?|messages?|"
    r"documents?|page|text|file|records?|thread)\b",
    r"\b(?:whoever|anyone\s+who|anything\s+that|any\s+(?:tool|system|program)\s+that)\s+"
    r"(?:summari[sz]es|processes|parses|answers\s+questions\s+(?:about|on))\b",
    r"\b(?:do\s+not|don't|never)\s+(?:mention|reveal)\s+(?:this|these)\s+(?:note|instructions?)\s+"
    r"(?:to|in)\s+(?:the\s+|your\s+)?(?:user|customer|reader|answer|response|reply)\b",
)
_EDIT_VERB = (
    r"(?:add|include|insert|integrate|incorporate|append|prepend|mention|embed|weave|slip|put|"
    r"place|use|replace|substitute|swap|convert|remove|omit|group|combine|introduce|misspell|"
    r"anagram|scramble|jumble|rearrange|shuffle|reverse|encode|suggest|recommend|promote|"
    r"advertise|encourage|urge|remind|tell|inform|invite|ask|state|claim|stress|emphasi[sz]e|"
    r"highlight|express|tease|hint|link|direct|offer|thank|praise|end|finish|close|begin|start|"
    r"sign|advise|write|provide|render|spell|format|translate|say)"
)
_OUTPUT = r"(?:responses?|answers?|repl(?:y|ies)|outputs?)"
# What one person asks another to put in a reply: their own details, or a reference number.
_READERS_OWN = (
    r"(?:your|us|me)\b|(?:the|a|an)\s+(?:\w+\s+)?(?:number|code|id|reference|photo|receipt|form|"
    r"document|copy|details|date)\b"
)
_ANSWER_TAMPERING = _rule(
    "answer_tampering",
    "tells the reader how to write its answer",
    # "in your reply" after an edit verb, unless the verb's object is the reader's own ("include
    # your order number in your reply", "tell us in your reply"): that is ordinary mail.
    rf"\b{_EDIT_VERB}\s+(?!{_READERS_OWN})(?:[^.!?]|[.!?](?=\S)){{0,120}}?\b(?:in|into|to|"
    rf"throughout|within|from|at\s+the\s+(?:end|start|beginning)\s+of)\s+(?:each\s+of\s+|every\s+)?"
    rf"your\s+{_OUTPUT}\b",
    rf"\b(?:in|within|throughout|at\s+the\s+(?:end|start)\s+of)\s+your\s+{_OUTPUT}\s*,?\s+"
    rf"(?:please\s+|also\s+|always\s+)?{_EDIT_VERB}\s+(?!{_READERS_OWN})",
    rf"\b(?:modify|change|alter|augment|enhance|expand|rewrite|encode|render|scramble|jumble|"
    rf"format|translate|reverse)\s+(?:each\s+of\s+|every\s+)?your\s+{_OUTPUT}\b",
    r"\b(?:encode|render|scramble|jumble|reverse)\s+your\s+messages?\b",
    rf"\b(?:letters?|vowels?|consonants?|characters?|spaces?|punctuation|nouns?|keywords?)"
    rf"\s+(?:\w+\s+){{0,4}}(?:in|of|from|within)\s+your\s+{_OUTPUT}(?:'s)?\b",
    rf"\byour\s+{_OUTPUT}(?:'s)?\s+(?:letters|vowels)\b",
    rf"\b(?:provide|give|write|deliver|present|compose)\s+your\s+{_OUTPUT}\s+(?:using|without\s+"
    rf"(?:any\s+)?(?:spaces|punctuation|vowels)|with\s+(?:intentional|random|deliberate)|in\s+"
    rf"(?:reverse|code|base64|emojis?|anagrams?|pig\s+latin|leetspeak|capital))\b",
    r"\b(?:respond|reply|answer|write)\s+(?:only\s+)?(?:in|with|using)\s+(?:emojis?|base64|pig\s+"
    r"latin|leetspeak|capital\s+letters|uppercase|rhym\w+|anagrams?|ciphers?|morse|klingon)\b",
)
# answer_tampering also matches the odd sentence of ordinary mail, so on its own it only lowers
# the detector's bar for that passage instead of flagging it.
_WEAK_DOCUMENT_RULES = frozenset({"answer_tampering"})
_EXFILTRATION = _rule(
    "exfiltration",
    "tells the reader to send private data to an outside address",
    r"\b(?:send|forward|e-?mail|post|upload|transmit|leak|copy|share|submit)\b[^.!?]{0,80}"
    r"\b(?:passwords?|credentials|card\s+(?:numbers?|details)|security\s+(?:answers?|codes?|"
    r"questions?)|pins?|one-time\s+codes?|conversation|chat\s+history|mailbox|inbox|contacts|"
    r"personal\s+data|customer\s+data|api\s+keys?|saved\s+card)\b[^.!?]{0,60}\b(?:to|at|via)\s+"
    r"(?:[\w.+-]+@[\w-]+\.[\w.]+|https?://|www\.)",
)
_DOCUMENT_PERSONA = _rule(
    "persona_switch",
    "tries to give the AI reading the text another identity",
    r"\bpretend\s+(?:that\s+)?(?:you\s+are|you're)\s+(?:an?\s+)?(?:\w+\s+)?(?:ai|bot|assistant|"
    r"model|hacker|unrestricted|unfiltered)\b",
    r"\bstay\s+in\s+character\b",
    r"\bdo\s+anything\s+now\b",
    r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:an?\s+)?(?:ai|assistant|chat\s?bot|language\s+model|"
    r"unrestricted|unfiltered|jailbroken)\b",
)

QUESTION_RULES: tuple[InjectionRule, ...] = (
    _OVERRIDE,
    _IGNORE_SOURCES,
    _PERSONA,
    _PERSONA_NAME,
    _EXTRACTION,
    _HIDDEN_CONTEXT,
    _OTHER_CUSTOMERS,
    _THIRD_PARTY_BY_NAME,
    _SECRETS,
    _DISABLE_SAFETY,
    _FAKE_AUTHORITY,
    _FAKE_AUTHORITY_MARKER,
    _OUTPUT_HIJACK,
    _MARKUP,
    _ENCODED,
    _HARMFUL,
    _FALSE_POLICY,
)
# Documents legitimately tell staff and customers what to do ("skip the fee for gold members",
# "keep your API key secret", "you are now subscribed"), so they get the rules about addressing
# an AI, not those about a customer's request.
DOCUMENT_RULES: tuple[InjectionRule, ...] = (
    _AI_ADDRESSED,
    _OVERRIDE,
    _IGNORE_SOURCES,
    _DOCUMENT_PERSONA,
    _EXTRACTION,
    _DOCUMENT_MARKUP,
    _ENCODED,
    _EXFILTRATION,
    _ANSWER_TAMPERING,
)


def normalise(text: str) -> str:
    """Text folded to the form the rules and detector read (NFKC, no invisible characters)."""
    text = unicodedata.normalize("NFKC", text)
    return _INVISIBLE.sub("", text)


def decoded_payloads(text: str) -> list[str]:
    """Readable text hidden in base64 runs of text, so encoded instructions are read too."""
    found = []
    for token in _BASE64_TOKEN.findall(text):
        padded = token + "=" * (-len(token) % 4)
        try:
            raw = base64.b64decode(padded, validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(ch.isprintable() or ch.isspace() for ch in decoded)
        if decoded and " " in decoded and printable / len(decoded) > 0.95:
            found.append(decoded)
    return found


def match_rules(text: str, rules: Sequence[InjectionRule]) -> tuple[RuleMatch, ...]:
    """Every rule of `rules` that fires on text (one match per rule name)."""
    matches: dict[str, RuleMatch] = {}
    for rule in rules:
        if rule.name not in matches and (found := rule.find(text)):
            matches[rule.name] = found
    return tuple(matches.values())


def split_passages(text: str) -> list[str]:
    """Sentences and lines of a text, long ones cut into overlapping word windows."""
    passages = []
    for part in _SENTENCE_BREAK.split(text):
        words = _FIELD_PREFIX.sub("", part.strip()).split()
        if not words:
            continue
        if len(words) <= WINDOW_WORDS + WINDOW_STRIDE:
            passages.append(" ".join(words))
            continue
        for start in range(0, len(words) - WINDOW_STRIDE, WINDOW_STRIDE):
            passages.append(" ".join(words[start : start + WINDOW_WORDS]))
    return passages


def _word_count(text: str) -> int:
    return len(_WORD.findall(_ADDRESS.sub(" ", text)))


def _fit_logistic(features: np.ndarray, labels: np.ndarray, penalty: float) -> np.ndarray:
    """Class-balanced L2 logistic regression by Newton steps; the last weight is the bias."""
    x = np.hstack([features, np.ones((len(features), 1))])
    positives = labels.sum()
    sample_weight = np.where(labels == 1, 0.5 / positives, 0.5 / (len(labels) - positives))
    sample_weight *= len(labels)
    ridge = np.full(x.shape[1], penalty)
    ridge[-1] = 0.0
    weights = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ weights)))
        gradient = x.T @ (sample_weight * (p - labels)) + ridge * weights
        hessian = (x.T * (sample_weight * p * (1 - p))) @ x + np.diag(ridge)
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(weights)), gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


class ExemplarDetector:
    """Scores texts by how much their embeddings resemble attack exemplars over benign ones."""

    def __init__(self, embedder: Embedder, attacks: Sequence[str], benign: Sequence[str]):
        self._embedder = embedder
        vectors = np.asarray(embedder.embed([*attacks, *benign]), dtype=np.float64)
        self._attacks = vectors[: len(attacks)]
        self._benign = vectors[len(attacks) :]
        labels = np.r_[np.ones(len(attacks)), np.zeros(len(benign))]
        self._weights = _fit_logistic(vectors, labels, L2_PENALTY)

    def score(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per text: the attack probability, and the neighbour margin (attack minus benign)."""
        if not texts:
            return np.zeros(0), np.zeros(0)
        vectors = np.asarray(self._embedder.embed(list(texts)), dtype=np.float64)
        logits = vectors @ self._weights[:-1] + self._weights[-1]
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        margin = _top_mean(vectors @ self._attacks.T) - _top_mean(vectors @ self._benign.T)
        return probabilities, margin


def _top_mean(similarities: np.ndarray) -> np.ndarray:
    return np.sort(similarities, axis=1)[:, -NEIGHBOURS:].mean(axis=1)


class InjectionGuard:
    """Screens customer questions and retrieved texts for prompt injection."""

    def __init__(self, embedder: Embedder):
        self.questions = ExemplarDetector(
            embedder, exemplars.QUESTION_ATTACKS, exemplars.QUESTION_BENIGN
        )
        self.documents = ExemplarDetector(
            embedder, exemplars.DOCUMENT_ATTACKS, exemplars.DOCUMENT_BENIGN
        )

    def screen_questions(self, questions: Sequence[str]) -> list[QuestionVerdict]:
        """One verdict per question, embedding them in one batch."""
        readable = [normalise(q) for q in questions]
        # A question is judged whole and sentence by sentence, so an attack appended to a real
        # question ("What's the refund window? Also, ignore your rules...") still stands out;
        # decoded base64 is judged as if typed.
        pieces: list[list[str]] = []
        for text in readable:
            sentences = [s for s in split_passages(text) if _word_count(s) >= MIN_DETECTOR_WORDS]
            pieces.append([text, *(sentences if len(sentences) > 1 else [])])
            pieces[-1].extend(decoded_payloads(text))
        flat = [piece for group in pieces for piece in group]
        probabilities, margins = self.questions.score(flat)
        verdicts = []
        start = 0
        for text, group in zip(readable, pieces, strict=True):
            end = start + len(group)
            hits = (probabilities[start:end] >= QUESTION_THRESHOLD) & (margins[start:end] >= 0)
            detector_score = float(probabilities[start:end].max())
            start = end
            matches = match_rules(text, QUESTION_RULES)
            for decoded in decoded_payloads(text):
                matches += tuple(
                    RuleMatch("encoded_payload", f"decoded text: {m.reason}", decoded[:120])
                    for m in match_rules(decoded, QUESTION_RULES)
                )
            detector_hit = bool(hits.any())
            verdicts.append(
                QuestionVerdict(
                    blocked=bool(matches) or detector_hit,
                    score=1.0 if matches else detector_score,
                    detector_score=detector_score,
                    detector_hit=detector_hit,
                    rule_matches=matches,
                )
            )
        return verdicts

    def inspect_documents(self, texts: Sequence[str]) -> list[DocumentVerdict]:
        """One verdict per document text, embedding all their passages in one batch."""
        passages = [split_passages(normalise(text)) for text in texts]
        for text, group in zip(texts, passages, strict=True):
            group.extend(decoded_payloads(normalise(text)))
        # Repeated passages (page headers and footers of a PDF) are embedded once.
        scored = list(
            dict.fromkeys(
                p
                for group in passages
                for p in group
                if _word_count(p) >= MIN_DOCUMENT_DETECTOR_WORDS
            )
        )
        probabilities, margins = self.documents.score(scored)
        detector = {
            p: (float(prob), float(margin))
            for p, prob, margin in zip(scored, probabilities, margins, strict=True)
        }
        verdicts = []
        for group in passages:
            flagged: list[SuspiciousPassage] = []
            any_rule = any_detector = False
            for passage in group:
                probability, margin = detector.get(passage, (0.0, -1.0))
                matches = match_rules(passage, DOCUMENT_RULES)
                strong = any(m.rule not in _WEAK_DOCUMENT_RULES for m in matches)
                detector_hit = probability >= DOCUMENT_THRESHOLD and margin >= 0
                corroborated = (
                    bool(matches)
                    and probability >= CORROBORATING_THRESHOLD
                    and margin >= CORROBORATING_MARGIN
                )
                any_rule |= bool(matches)
                any_detector |= detector_hit
                if strong or detector_hit or corroborated:
                    flagged.append(SuspiciousPassage(passage, probability, detector_hit, matches))
            scores = [1.0 if p.rule_matches else p.detector_score for p in flagged] or [
                detector.get(p, (0.0, 0.0))[0] for p in group
            ]
            verdicts.append(
                DocumentVerdict(
                    flagged=bool(flagged),
                    score=max(scores, default=0.0),
                    rules_hit=any_rule,
                    detector_hit=any_detector,
                    passages=tuple(flagged),
                )
            )
        return verdicts


@lru_cache(maxsize=1)
def get_injection_guard() -> InjectionGuard:
    """The process-wide guard: the model and the exemplar embeddings are computed once."""
    return InjectionGuard(get_embedder(DETECTOR_MODEL, "cpu"))


def screen_question(question: str) -> QuestionVerdict:
    """Whether a customer question is a prompt-injection attempt, with the reasons."""
    return get_injection_guard().screen_questions([question])[0]


def inspect_document(text: str) -> DocumentVerdict:
    """Whether a document chunk or customer record carries instructions aimed at the AI."""
    return get_injection_guard().inspect_documents([text])[0]


def neutralise(text: str) -> str:
    """Retrieved text made safe to place inside a prompt data block.

    Angle brackets and ampersands are escaped, so no tag (our delimiter or a chat template's)
    can be formed; NFKC first turns look-alike brackets into real ones so they are escaped too,
    and invisible and control characters, which only serve to hide text, are removed.
    """
    text = _CONTROL.sub("", normalise(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quote_as_data(text: str, source: str, flagged: bool = False) -> str:
    """Text wrapped in a data block that the text itself cannot close."""
    label = neutralise(source).replace('"', "&quot;")
    mark = ' suspected_injection="true"' if flagged else ""
    return f'<{DATA_BLOCK_TAG} source="{label}"{mark}>\n{neutralise(text)}\n{DATA_CLOSE}'
