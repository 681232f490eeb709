"""The hand-written exemplars the detectors learn from, read from data/exemplars/*.jsonl.

Four sets: attacks typed into a customer question and ordinary questions (many on purpose using
the words attacks use: ignore, bypass, override, pretend, system, admin), and instructions for an
AI assistant hidden in a document or e-mail beside the ordinary sentences such texts carry
(including policy text that legitimately tells a support agent what to do). They are written in
varied wording across retail, outdoor gear, banking, airline, telecom and benefits; the
evaluation sets under ../shared/eval are kept out of them so that measuring there means something.

Each line of a file is one exemplar, `{"group": what kind of text it is, "text": the text}`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files

EXEMPLAR_SETS = ("question_attacks", "question_benign", "document_attacks", "document_benign")


@dataclass(frozen=True)
class Exemplars:
    """Attack and benign texts of one detector."""

    attacks: tuple[str, ...]
    benign: tuple[str, ...]


def _raw(name: str) -> bytes:
    return files("freshkb.screening").joinpath(f"data/exemplars/{name}.jsonl").read_bytes()


def read_exemplars(name: str) -> tuple[str, ...]:
    """The texts of one exemplar set (one of EXEMPLAR_SETS), in file order."""
    lines = _raw(name).decode("utf-8").splitlines()
    return tuple(json.loads(line)["text"] for line in lines if line.strip())


def question_exemplars() -> Exemplars:
    """Attacks typed into questions, and ordinary questions."""
    return Exemplars(read_exemplars("question_attacks"), read_exemplars("question_benign"))


def document_exemplars() -> Exemplars:
    """Instructions hidden in documents, and ordinary document sentences."""
    return Exemplars(read_exemplars("document_attacks"), read_exemplars("document_benign"))


def exemplars_digest() -> str:
    """sha256 over every exemplar file: changes whenever any exemplar does."""
    digest = hashlib.sha256()
    for name in EXEMPLAR_SETS:
        digest.update(name.encode())
        digest.update(_raw(name))
    return digest.hexdigest()
