"""Rich progress bars for long stages, on stderr so `--json` output on stdout stays clean."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int, int], None]

_console = Console(stderr=True)


def progress_enabled() -> bool:
    """Bars show on an interactive terminal unless FRESHKB_PROGRESS=0 (or =1 forces them)."""
    setting = os.environ.get("FRESHKB_PROGRESS")
    if setting is not None:
        return setting == "1"
    return sys.stderr.isatty()


@contextmanager
def stage_progress(description: str) -> Iterator[Advance]:
    """A bar for one stage; the yielded callback takes (done, total)."""
    if not progress_enabled():
        yield lambda done, total: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield advance
