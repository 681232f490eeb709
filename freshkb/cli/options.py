"""Options several commands share, and the settings a command reads through them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from freshkb.core.config import Settings
from freshkb.core.records import SourceKind

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Config file (default: $FRESHKB_CONFIG or ./freshkb.yaml)."),
]
KindOption = Annotated[
    SourceKind,
    typer.Option("--kind", help="documents (PolicyChunk) or customers (CustomerRecord)."),
]


def settings_for(config: Path | None) -> Settings:
    """Settings read from `--config` when given, else from $FRESHKB_CONFIG or ./freshkb.yaml."""
    return Settings() if config is None else Settings(config_file=config)


def config_argument(config: Path | None) -> str | None:
    """`--config` as a flow parameter (flows take plain strings)."""
    return None if config is None else str(config)
