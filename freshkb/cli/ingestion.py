"""Commands about sources: ingest them, list them, and how fresh each one is."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich import box
from rich.table import Table

from freshkb.cli.options import ConfigOption, JsonFlag, config_argument, settings_for
from freshkb.cli.output import err, fail, out, print_json, show_report, wide_console
from freshkb.cli.prefect_runs import explained_prefect_failures, use_running_prefect_server
from freshkb.cli.temporary_prefect import start_temporary_server
from freshkb.core.durations import format_duration
from freshkb.core.errors import ConfigError, FreshkbError
from freshkb.core.records import SourceKind
from freshkb.core.sources import AnySource, get_source, load_sources, parse_source

if TYPE_CHECKING:
    from freshkb.validation.freshness import SourceFreshness

STATE_STYLE = {"fresh": "green", "stale": "yellow", "failed": "red", "never synced": "dim"}


# The options of `freshkb ingest`: a declared source, all of them, or one given ad hoc.
SourceName = Annotated[str | None, typer.Argument(help="A source declared in the config file.")]
AllFlag = Annotated[bool, typer.Option("--all", help="Ingest every declared source.")]
AdHocName = Annotated[
    str | None, typer.Option("--source", help="Ad hoc source name (with --kind, --path).")
]
AdHocKind = Annotated[SourceKind | None, typer.Option(help="documents or customers.")]
AdHocPath = Annotated[str | None, typer.Option(help="Folder, file or SQLAlchemy URL.")]
SqlTable = Annotated[str | None, typer.Option(help="SQL table (with a SQLAlchemy URL).")]
SqlQuery = Annotated[str | None, typer.Option(help="SQL query (with a SQLAlchemy URL).")]
CustomerField = Annotated[
    str | None, typer.Option("--customer-id", help="Field holding the customer id.")
]
KeyField = Annotated[str | None, typer.Option(help="Primary-key field of customer records.")]
IncludeGlobs = Annotated[list[str] | None, typer.Option(help="Glob of files to take (repeatable).")]
MassDeleteFlag = Annotated[
    bool,
    typer.Option(
        "--allow-mass-delete",
        help="Confirm a real clean-up: let this run delete more than the source's "
        "max_delete_share of its live documents, or all of them if it is empty.",
    ),
]


# A Typer command takes one parameter per command-line option.
def ingest(  # noqa: PLR0913
    name: SourceName = None,
    all_sources: AllFlag = False,
    source: AdHocName = None,
    kind: AdHocKind = None,
    path: AdHocPath = None,
    table: SqlTable = None,
    query: SqlQuery = None,
    customer_id: CustomerField = None,
    key: KeyField = None,
    include: IncludeGlobs = None,
    allow_mass_delete: MassDeleteFlag = False,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Load, validate, chunk, embed and upsert sources into Weaviate; prints the run report."""
    from freshkb.store import server

    ad_hoc = {"table": table, "query": query, "customer_id": customer_id, "key": key}
    try:
        settings = settings_for(config)
        use_running_prefect_server(settings)  # before Prefect is imported: it reads the URL once
        if sum([name is not None, all_sources, source is not None]) != 1:
            raise ConfigError(
                "give exactly one of: a source NAME, --all, or --source with --kind and --path"
            )
        if source is not None:
            sources = [ad_hoc_source(source, kind, path, include, ad_hoc)]
        else:
            sources = declared_sources(name, settings.config_file)
        start_temporary_server()  # else Prefect's own, booting while this command prepares
        server.ensure_running(settings, announce=err.print)
    except FreshkbError as exc:
        raise fail(exc) from exc
    from freshkb.flows.deployed import source_slot
    from freshkb.flows.ingest import ingest_source

    try:
        with explained_prefect_failures():
            reports = []
            for s in sources:
                # Against a Prefect server, wait for a deployed run of the same source to end.
                with source_slot(s.name):
                    reports.append(
                        ingest_source(
                            config_file=config_argument(config),
                            source_config=s.model_dump(mode="json"),
                            allow_mass_delete=allow_mass_delete,
                        )
                    )
    except FreshkbError as exc:
        raise fail(exc) from exc
    if json_out:
        print_json([r.to_dict() for r in reports] if all_sources else reports[0].to_dict())
    else:
        for report in reports:
            show_report(report)
    if not all(report.completed for report in reports):
        raise typer.Exit(1)


def declared_sources(name: str | None, config_file: Path) -> list[AnySource]:
    """The source called `name` in the config file, or with no name all of them."""
    if name is not None:
        return [get_source(name, config_file)]
    sources = load_sources(config_file)
    if not sources:
        raise ConfigError(f"{config_file} declares no sources")
    return sources


def ad_hoc_source(
    name: str,
    kind: SourceKind | None,
    path: str | None,
    include: list[str] | None,
    options: dict[str, str | None],
) -> AnySource:
    """A source given on the command line (`--source`), its folder resolved from here."""
    if kind is None or path is None:
        raise ConfigError("--source needs --kind (documents|customers) and --path")
    fields: dict[str, Any] = {"name": name, "kind": kind, "location": path, "owner": "ad hoc"}
    if include:
        fields["include"] = include
    fields |= {field: value for field, value in options.items() if value is not None}
    try:
        config = parse_source(fields)
    except ValidationError as exc:
        raise ConfigError(f"ad hoc source {name!r}: {exc}") from exc
    return config.resolved(Path.cwd())


def sources(config: ConfigOption = None, json_out: JsonFlag = False) -> None:
    """List the sources declared in the config file."""
    try:
        declared = load_sources(config)
    except FreshkbError as exc:
        raise fail(exc) from exc
    if json_out:
        print_json([s.model_dump(mode="json") for s in declared])
        return
    table = Table("name", "kind", "location", "owner")
    for s in declared:
        table.add_row(s.name, s.kind.value, s.location, s.owner)
    out.print(table)


def status(config: ConfigOption = None, json_out: JsonFlag = False) -> None:
    """Freshness of every source: age against its SLA, state, last failure (from the ledger)."""
    from freshkb.store.ledger import Ledger

    try:
        settings = settings_for(config)
        declared = load_sources(settings.config_file) if settings.config_file.is_file() else []
        ledger = Ledger(settings.ledger_database_url)
    except FreshkbError as exc:
        raise fail(exc) from exc
    try:
        states = ledger.states(declared=declared)
    finally:
        ledger.close()
    if json_out:
        print_json([state.to_dict() for state in states])
    else:
        wide_console().print(_freshness_table(states))
    if any(not state.usable for state in states):
        raise typer.Exit(1)


def _freshness_table(states: list[SourceFreshness]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("source", "kind", "state", "age / SLA", "last success", "last run"):
        table.add_column(column, no_wrap=True)
    table.add_column("why", overflow="fold", min_width=24)
    for state in states:
        style = STATE_STYLE.get(state.state.value, "")
        age = "-" if state.age_seconds is None else format_duration(state.age_seconds)
        sla = "-" if state.sla_seconds is None else format_duration(state.sla_seconds)
        table.add_row(
            state.name,
            state.kind,
            f"[{style}]{state.state.value}[/]",
            f"{age} / {sla}",
            state.last_success_at.strftime("%Y-%m-%d %H:%M") if state.last_success_at else "-",
            state.last_status or "-",
            "; ".join(state.reasons) or "",
        )
    return table
