"""Hand-written exemplars, read from data/exemplars/*.jsonl.

Four sets: instructions for an AI assistant hidden in a document or e-mail beside the ordinary
sentences such texts carry (including policy text that legitimately tells a support agent what
to do), which the document detector learns from; and attacks typed into a customer question and
ordinary questions (many on purpose using the words attacks use: ignore, bypass, override,
pretend, system, admin). The question detector is trained on public data (screening/train.py);
half A of the question sets only serves its neighbour check, which keeps ordinary customer
requests the public sets lack ("Please confirm this in writing") from being blocked, and half B
is a held-out check of it (bench/safety_eval.py).
They are written in varied wording across retail, outdoor gear, banking, airline, telecom and
benefits; the evaluation sets under ../shared/eval are kept out of them.

Each line of a file is one exemplar, `{"group": what kind of text it is, "text": the text}`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files

from freshkb.core.ids import text_half

EXEMPLAR_SETS = ("question_attacks", "question_benign", "document_attacks", "document_benign")
# The sets the document detector is fitted on: a change to them means fitting again.
FITTED_SETS = ("document_attacks", "document_benign")
QUESTION_SETS = ("question_attacks", "question_benign")


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


def question_exemplars(half: str | None = None) -> Exemplars:
    """Attacks typed into questions, and ordinary questions; only half A or B if given
    (core.ids.text_half: the question detector's neighbour check uses half A, B is held out)."""
    attacks, benign = read_exemplars("question_attacks"), read_exemplars("question_benign")
    if half is None:
        return Exemplars(attacks, benign)
    return Exemplars(
        tuple(t for t in attacks if text_half(t) == half),
        tuple(t for t in benign if text_half(t) == half),
    )


def document_exemplars() -> Exemplars:
    """Instructions hidden in documents, and ordinary document sentences."""
    return Exemplars(read_exemplars("document_attacks"), read_exemplars("document_benign"))


def exemplars_digest(names: tuple[str, ...] = FITTED_SETS) -> str:
    """sha256 over exemplar files (default: the document detector's): changes when one does."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(_raw(name))
    return digest.hexdigest()
