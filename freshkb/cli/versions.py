"""Commands about index versions: list them, rebuild a collection, roll one back."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from freshkb.cli.options import (
    ConfigOption,
    JsonFlag,
    KindOption,
    config_argument,
    settings_for,
)
from freshkb.cli.output import err, fail, out, print_json, show_report
from freshkb.cli.prefect_runs import explained_prefect_failures
from freshkb.cli.temporary_prefect import start_temporary_server
from freshkb.core.config import Settings
from freshkb.core.errors import FreshkbError
from freshkb.core.records import SourceKind
from freshkb.core.sources import load_sources

if TYPE_CHECKING:
    from freshkb.store.protocol import IndexVersion


def versions(
    kind: Annotated[
        SourceKind | None, typer.Option("--kind", help="Only this kind (default: both).")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the index versions behind each alias: model, objects, created, flow run, live."""
    from freshkb.store import server
    from freshkb.store.weaviate_store import open_store

    settings = Settings()
    try:
        server.ensure_running(settings, announce=err.print)
        with open_store(settings) as store:
            found = store.versions(kind)
    except FreshkbError as exc:
        raise fail(exc) from exc
    if json_out:
        print_json([{**asdict(v), "kind": v.kind.value, "complete": v.complete} for v in found])
        return
    table = Table("version", "live", "model", "objects", "created", "promoted", "flow run")
    for v in found:
        table.add_row(
            v.name,
            _version_state(v),
            f"{v.model_id} ({v.dimension})",
            str(v.objects),
            v.created_at or "-",
            v.promoted_at or "-",
            v.flow_run_id or "-",
        )
    out.print(table)


def _version_state(version: IndexVersion) -> str:
    if version.live:
        return "[green]live[/]"
    if version.rolled_back_at:
        return "[dim]rolled back[/]"
    if version.failed_at:
        return "[red]failed[/]"
    return "complete" if version.complete else "[yellow]incomplete[/]"


def rollback(kind: KindOption, json_out: JsonFlag = False) -> None:
    """Point the alias of KIND back at the previous complete version."""
    from freshkb.flows.versions import rollback_collection
    from freshkb.store import server

    settings = Settings()
    try:
        server.ensure_running(settings, announce=err.print)
        done = rollback_collection(settings, kind)
    except FreshkbError as exc:
        raise fail(exc) from exc
    if json_out:
        print_json(done.to_dict())
    else:
        out.print(
            f"{kind.value}: answers now read {done.restored.name} "
            f"(model {done.restored.model_id}), was {done.previous}; "
            f"its data is as of {done.data_as_of}"
        )


def rebuild(kind: KindOption, config: ConfigOption = None, json_out: JsonFlag = False) -> None:
    """Build a new index version of KIND from every declared source, switch when complete."""
    from freshkb.flows.rebuild import rebuild_index
    from freshkb.store import server

    try:
        settings = settings_for(config)
        start_temporary_server()  # Prefect's, booting while Weaviate starts and Prefect imports
        server.ensure_running(settings, announce=err.print)
        load_sources(settings.config_file)
    except FreshkbError as exc:
        raise fail(exc) from exc
    try:
        with explained_prefect_failures():
            summary = rebuild_index(kind.value, config_file=config_argument(config))
    except FreshkbError as exc:
        raise fail(exc) from exc
    if json_out:
        print_json(summary.to_dict())
    else:
        for report in summary.reports:
            show_report(report)
        if summary.promoted:
            out.print(
                f"[green]promoted[/] {summary.version} (model {summary.model_id}); "
                f"previous {summary.previous} kept for `freshkb rollback`"
            )
        else:
            out.print(f"[red]not promoted[/]: {escape(str(summary.error))}", highlight=False)
    if not summary.promoted:
        raise typer.Exit(1)
