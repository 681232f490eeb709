"""Commands for the questions handed to a human: list, resolve, export as evaluation cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from freshkb.cli.options import JsonFlag
from freshkb.cli.output import err, fail, out, print_json
from freshkb.core.config import Settings
from freshkb.core.errors import FreshkbError

if TYPE_CHECKING:
    from freshkb.serving.escalations import EscalationStore

escalations_app = typer.Typer(help="Questions handed to a human.", no_args_is_help=True)


def _store() -> EscalationStore:
    """The escalations, in the ledger's database."""
    from freshkb.serving.escalations import EscalationStore

    return EscalationStore(Settings().ledger_database_url)


@escalations_app.command("list")
def escalations_list(
    status: Annotated[str | None, typer.Option(help="open or resolved.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List escalated questions, newest first."""
    store = _store()
    try:
        items = store.find(status)
    finally:
        store.close()
    if json_out:
        print_json([item.to_dict() for item in items])
        return
    table = Table("id", "created", "status", "customer", "question", "why")
    for item in items:
        table.add_row(
            item.id,
            item.created_at.strftime("%Y-%m-%d %H:%M"),
            item.status,
            item.customer_id or "-",
            item.question,
            "; ".join(item.reasons),
        )
    out.print(table)


@escalations_app.command("resolve")
def escalations_resolve(
    escalation_id: Annotated[str, typer.Argument(help="The escalation's id.")],
    answer: Annotated[str, typer.Option("--answer", help="The human answer.")],
    by: Annotated[str, typer.Option("--by", help="Who answered.")] = "agent",
    json_out: JsonFlag = False,
) -> None:
    """Record the human answer to an escalation."""
    store = _store()
    try:
        item = store.resolve(escalation_id, answer, by)
    except FreshkbError as exc:
        raise fail(exc) from exc
    finally:
        store.close()
    if json_out:
        print_json(item.to_dict())
    else:
        out.print(f"resolved {item.id}")


@escalations_app.command("export")
def escalations_export(
    output: Annotated[Path, typer.Option("--output", help="JSON lines file to write.")],
) -> None:
    """Export resolved escalations as evaluation cases (question, truth, ...) in JSON lines."""
    store = _store()
    try:
        cases = store.export_cases()
    finally:
        store.close()
    output.write_text("".join(json.dumps(case) + "\n" for case in cases))
    err.print(f"wrote {len(cases)} evaluation cases to {output}")
