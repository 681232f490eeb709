"""How text is read: folded to one form, decoded where encoded, cut into passages (the unit the
injection screen judges and search's passage vectors are made of)."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

# Long run-on passages are scored in overlapping windows, so one instruction inside a long
# paragraph is not averaged away by the sentences around it.
WINDOW_WORDS = 30
WINDOW_STRIDE = 15

# Bump when the cutting into passages changes: cached document verdicts then miss once.
READING_VERSION = 2
INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|(?<=[a-z][.!?])(?=[A-Z])|\n+|\s*\|\s*")
# A capitalised word glued to the text before it ("withdrawn fromWrite a story..."): text pasted
# or extracted without its break, the way an instruction is slipped into the middle of an
# e-mail. The rest of the sentence from there is judged as a passage of its own too, so the
# instruction is not averaged into the sentence it was glued to. Only the rest: the text
# before such a point is often a name in camel case ("the PowerBoost engine"), not a passage.
_GLUED = re.compile(r"(?<=[a-z0-9])(?=[A-Z][a-z]+\b)")
_FIELD_PREFIX = re.compile(r"^[A-Z][A-Z_ ]{2,20}:\s*")
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_WORD = re.compile(r"[^\W\d_]{2,}")
# Addresses are identifiers, not words: "email: anya.lee3013@example.com" is a record field.
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+|\bhttps?://\S+|\bwww\.\S+")
_LIST_MARKER = re.compile(r"(?m)^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+")
# A numbered list written on one line ("Steps: 1. Call us. 2. Send the form."): a number after
# the start or a sentence's end, followed by a capital; counted as a list only when its numbers
# run 1, 2, 3..., so "a refund within 2. Then..." is still read as a figure.
_INLINE_MARKER = re.compile(r"(?:^|(?<=[:.;!?]))\s+(\d{1,2})[.)]\s+(?=[A-Z])")


def normalise(text: str) -> str:
    """Text folded to the form the rules and detector read (NFKC, no invisible characters)."""
    text = unicodedata.normalize("NFKC", text)
    return INVISIBLE.sub("", text)


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


def split_passages(text: str) -> list[str]:
    """Sentences and lines of a text, long ones cut into overlapping word windows, and the rest
    of a sentence from a word glued to the text before it."""
    passages = []
    for part in _SENTENCE_BREAK.split(text):
        part = _FIELD_PREFIX.sub("", part.strip())
        for piece in (part, *(part[glued.start() :] for glued in _GLUED.finditer(part))):
            passages += word_windows(piece.split())
    return passages


def word_windows(
    words: list[str], size: int = WINDOW_WORDS, stride: int = WINDOW_STRIDE
) -> list[str]:
    """Words as one passage, or in overlapping windows of `size` when longer than size + stride."""
    if len(words) <= size + stride:
        return [" ".join(words)] if words else []
    starts = range(0, len(words) - stride, stride)
    return [" ".join(words[start : start + size]) for start in starts]


def word_count(text: str) -> int:
    """Words of text that carry meaning for the detector (addresses, numbers and markup aside)."""
    return len(_WORD.findall(_ADDRESS.sub(" ", text)))


def without_list_markers(text: str) -> str:
    """Text with list markers (bullets, "1." at a line's start, a one-line numbered list whose
    numbers run 1, 2, 3...) blanked, so their digits are not read as figures."""
    text = _LIST_MARKER.sub(" ", text)
    markers = list(_INLINE_MARKER.finditer(" " + text))
    if [int(m.group(1)) for m in markers] != list(range(1, len(markers) + 1)) or len(markers) < 2:
        return text
    for marker in markers:  # blanked in place: the offsets of the rest stay valid
        start, end = marker.start(1) - 1, marker.end(1)
        text = text[:start] + " " * (end - start) + text[end:]
    return text
