"""What the answerer puts in front of the model: the system prompt and quoted retrieved text.

Retrieved text enters the prompt only inside a data block that the text itself cannot close,
so instructions hidden in a document stay data. The system prompt is a versioned data file
(data/prompts/<version>.txt, its text exactly as sent, with ${data_block_tag} for the tag).
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from string import Template

from freshkb.core.errors import ConfigError
from freshkb.core.text import normalise

PROMPT_VERSION = "answer-v1"
DATA_BLOCK_TAG = "retrieved_data"
DATA_CLOSE = f"</{DATA_BLOCK_TAG}>"

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@cache
def system_prompt(version: str = PROMPT_VERSION) -> str:
    """The system prompt of a version, with the data block's tag filled in; ConfigError when
    the package has no prompt of that version."""
    prompts = files("freshkb.serving").joinpath("data/prompts")
    prompt = prompts.joinpath(f"{version}.txt")
    if "/" in version or "\\" in version or not prompt.is_file():
        known = sorted(p.name.removesuffix(".txt") for p in prompts.iterdir() if p.is_file())
        raise ConfigError(
            f"serving/data/prompts/{version}.txt: no such prompt version {version!r}; set "
            f"prompt_version (FRESHKB_PROMPT_VERSION) to one of {', '.join(known)}, or add the file"
        )
    text = prompt.read_text("utf-8")
    return Template(text.removesuffix("\n")).substitute(data_block_tag=DATA_BLOCK_TAG)


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
