"""How the CLI prints: JSON on stdout for machines, rich text for people, errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from freshkb.core.errors import FreshkbError

if TYPE_CHECKING:
    from freshkb.core.report import RunReport

out = Console()
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and logs


def fail(exc: FreshkbError, code: int = 2) -> typer.Exit:
    """Print a freshkb error on stderr; the exit to raise (`raise fail(exc) from exc`)."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    """Indented JSON on stdout; anything not JSON-native (dates, paths) as its string."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def wide_console() -> Console:
    """The console for wide tables: piped into a log or a file, a table 80 columns wide would
    fold every long cell."""
    return out if out.is_terminal else Console(width=200)


def show_report(report: RunReport) -> None:
    """An ingest's run report as a table, then each failed expectation, item and write."""
    out.print(_report_table(report))
    validation = report.validation
    for failure in validation.failures if validation else ():
        out.print(f"  [red]expectation failed[/] {escape(failure)}", highlight=False)
    for item in report.failures:
        out.print(
            f"  [yellow]failed[/] {escape(item.item)}: {escape(item.reason)}", highlight=False
        )
    for write in report.objects_failed[:20]:
        out.print(f"  [red]write failed[/] {write.uuid}: {escape(write.reason)}", highlight=False)


def _report_table(report: RunReport) -> Table:
    verdict = "[green]completed[/]" if report.completed else f"[red]failed[/] {report.error or ''}"
    table = Table(
        title=f"ingest {report.source} ({report.kind}): {verdict}",
        title_justify="left",
        show_header=False,
    )
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "documents",
        f"{report.documents_seen} seen: {report.documents_new} new, "
        f"{report.documents_changed} changed, {report.documents_unchanged} unchanged, "
        f"{report.documents_deleted} deleted, {report.documents_failed} failed",
    )
    table.add_row(
        "chunks embedded",
        f"{report.chunks_embedded} ({report.embeddings_computed} computed, "
        f"{report.embeddings_cached} from cache; {report.passages_embedded} passages)",
    )
    table.add_row("objects", f"{report.objects_written} written, {report.objects_deleted} deleted")
    if report.objects_live is not None:
        table.add_row("live after run", f"{report.objects_live} objects (verified)")
    validation = report.validation
    if validation:
        met = validation.evaluated - validation.failed
        passed = "[green]passed[/]" if validation.success else "[red]failed[/]"
        table.add_row(
            "validation",
            f"{passed}: {met} of {validation.evaluated} expectations met "
            f"[dim]({validation.results_file})[/]",
        )
    table.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in report.stage_seconds.items()))
    table.add_row("flow run", str(report.flow_run_id))
    return table
