"""`freshkb` command line: run the managed Weaviate, ingest sources, search the index."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from freshkb.core.config import Settings, SourceConfig, config_file_path, load_sources
from freshkb.core.errors import ConfigError, FreshkbError
from freshkb.core.records import SourceKind

# Models are read from installed packages or local paths; never reach for a hub implicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Prefect's local server would otherwise try to send usage telemetry from every run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    help="Keep a customer-service knowledge base fresh and answerable.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
weaviate_app = typer.Typer(
    help="Run the local Weaviate server freshkb manages.", no_args_is_help=True
)
app.add_typer(weaviate_app, name="weaviate")

out = Console()
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and logs

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Config file (default: $FRESHKB_CONFIG or ./freshkb.yaml)."),
]


def _fail(exc: FreshkbError, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(code)


def _use_config(config: Path | None) -> None:
    if config is not None:
        os.environ["FRESHKB_CONFIG"] = str(config)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def ensure_weaviate(settings: Settings) -> None:
    """Start the managed Weaviate if freshkb is meant to run it and it is not running."""
    from freshkb.store import server

    if settings.weaviate_url:
        return
    if not server.status(settings).running:
        err.print(
            f"starting Weaviate v{settings.weaviate_version} on "
            f"{server.local_url(settings)} (stop it with `freshkb weaviate down`)"
        )
        server.up(settings)


# -- weaviate ---------------------------------------------------------------------------------


@weaviate_app.command("up")
def weaviate_up(json_out: JsonFlag = False) -> None:
    """Build (first time only) and start Weaviate on 127.0.0.1; wait until it is ready."""
    from freshkb.store import server

    settings = Settings()
    try:
        if not server.binary_path(settings).is_file():
            err.print(
                f"building Weaviate v{settings.weaviate_version} with `go install` "
                "(first time only, several minutes)..."
            )
            _, seconds = server.build_binary(settings)
            err.print(f"built in {seconds:.0f}s: {server.binary_path(settings)}")
        status = server.up(settings)
    except FreshkbError as exc:
        raise _fail(exc) from exc
    _show_status(status, json_out)


@weaviate_app.command("down")
def weaviate_down(json_out: JsonFlag = False) -> None:
    """Stop the managed Weaviate (its data stays in the data directory)."""
    from freshkb.store import server

    stopped = server.down(Settings())
    if json_out:
        _print_json({"stopped": stopped})
    else:
        out.print("stopped" if stopped else "not running")


@weaviate_app.command("status")
def weaviate_status(json_out: JsonFlag = False) -> None:
    """Show whether Weaviate is running, where, and which version."""
    from freshkb.store import server

    status = server.status(Settings())
    _show_status(status, json_out)
    if not status.running:
        raise typer.Exit(1)


def _show_status(status: Any, json_out: bool) -> None:
    if json_out:
        _print_json(asdict(status))
        return
    state = "[green]running[/]" if status.running else "[red]not running[/]"
    out.print(
        f"Weaviate {state} at {status.url}" + (f" (v{status.version})" if status.version else "")
    )
    if status.managed:
        out.print(f"  managed by freshkb; pid {status.pid}; data {status.data_dir}")
        out.print(f"  binary {status.binary or 'not built yet'}")
    else:
        out.print("  external server (WEAVIATE_URL)")


# -- ingest -----------------------------------------------------------------------------------


@app.command()
def ingest(
    name: Annotated[
        str | None, typer.Argument(help="A source declared in the config file.")
    ] = None,
    all_sources: Annotated[
        bool, typer.Option("--all", help="Ingest every declared source.")
    ] = False,
    source: Annotated[
        str | None, typer.Option(help="Ad hoc source name (with --kind, --path).")
    ] = None,
    kind: Annotated[SourceKind | None, typer.Option(help="documents or customers.")] = None,
    path: Annotated[str | None, typer.Option(help="Folder, file or SQLAlchemy URL.")] = None,
    table: Annotated[str | None, typer.Option(help="SQL table (with a SQLAlchemy URL).")] = None,
    query: Annotated[str | None, typer.Option(help="SQL query (with a SQLAlchemy URL).")] = None,
    customer_id: Annotated[
        str | None, typer.Option("--customer-id", help="Field holding the customer id.")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Primary-key field of customer records.")] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Glob of files to take (repeatable).")
    ] = None,
    allow_mass_delete: Annotated[
        bool,
        typer.Option(
            "--allow-mass-delete",
            help="Confirm a real clean-up: let this run delete more than the source's "
            "max_delete_share of its live documents, or all of them if it is empty.",
        ),
    ] = False,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Load, validate, chunk, embed and upsert sources into Weaviate; prints the run report."""
    _use_config(config)
    try:
        sources = _selected_sources(
            name, all_sources, source, kind, path, table, query, customer_id, key, include
        )
        settings = Settings()
        ensure_weaviate(settings)
    except FreshkbError as exc:
        raise _fail(exc) from exc

    from freshkb.flows.ingest import ingest_source

    reports = [
        ingest_source(source_config=s.model_dump(mode="json"), allow_mass_delete=allow_mass_delete)
        for s in sources
    ]
    if json_out:
        _print_json(reports if all_sources else reports[0])
    else:
        for report in reports:
            _show_report(report)
    if any(report["status"] != "completed" for report in reports):
        raise typer.Exit(1)


def _selected_sources(
    name: str | None,
    all_sources: bool,
    source: str | None,
    kind: SourceKind | None,
    path: str | None,
    table: str | None,
    query: str | None,
    customer_id: str | None,
    key: str | None,
    include: list[str] | None,
) -> list[SourceConfig]:
    chosen = sum([name is not None, all_sources, source is not None])
    if chosen != 1:
        raise ConfigError(
            "give exactly one of: a source NAME, --all, or --source with --kind and --path"
        )
    if all_sources:
        sources = load_sources()
        if not sources:
            raise ConfigError(f"{config_file_path()} declares no sources")
        return sources
    if name is not None:
        from freshkb.core.config import get_source

        return [get_source(name)]
    if kind is None or path is None:
        raise ConfigError("--source needs --kind (documents|customers) and --path")
    fields: dict[str, Any] = {"name": source, "kind": kind, "location": path, "owner": "ad hoc"}
    if include:
        fields["include"] = include
    for field, value in (
        ("table", table),
        ("query", query),
        ("customer_id", customer_id),
        ("key", key),
    ):
        if value is not None:
            fields[field] = value
    try:
        config = SourceConfig.model_validate(fields)
    except ValueError as exc:
        raise ConfigError(f"ad hoc source {source!r}: {exc}") from exc
    return [config.resolved(Path.cwd())]


def _show_report(report: dict[str, Any]) -> None:
    ok = report["status"] == "completed"
    table = Table(
        title=f"ingest {report['source']} ({report['kind']}): "
        + ("[green]completed[/]" if ok else f"[red]failed[/] {report.get('error') or ''}"),
        title_justify="left",
        show_header=False,
    )
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "documents",
        f"{report['documents_seen']} seen: {report['documents_new']} new, "
        f"{report['documents_changed']} changed, {report['documents_unchanged']} unchanged, "
        f"{report['documents_deleted']} deleted, {report['documents_failed']} failed",
    )
    table.add_row(
        "chunks embedded",
        f"{report['chunks_embedded']} ({report['embeddings_computed']} "
        f"computed, {report['embeddings_cached']} from cache)",
    )
    table.add_row(
        "objects", f"{report['objects_written']} written, {report['objects_deleted']} deleted"
    )
    if report.get("objects_live") is not None:
        table.add_row("live after run", f"{report['objects_live']} objects (verified)")
    validation = report.get("validation") or {}
    if validation:
        met = validation["evaluated"] - validation["failed"]
        verdict = "[green]passed[/]" if validation["success"] else "[red]failed[/]"
        table.add_row(
            "validation",
            f"{verdict}: {met} of {validation['evaluated']} expectations met "
            f"[dim]({validation.get('results_file')})[/]",
        )
    table.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in report["stage_seconds"].items()))
    table.add_row("flow run", str(report["flow_run_id"]))
    out.print(table)
    for failure in validation.get("failures", []):
        out.print(f"  [red]expectation failed[/] {escape(failure)}", highlight=False)
    for failure in report["failures"]:
        item, reason = escape(failure["item"]), escape(failure["reason"])
        out.print(f"  [yellow]failed[/] {item}: {reason}", highlight=False)
    for failure in report["objects_failed"][:20]:
        reason = escape(failure["reason"])
        out.print(f"  [red]write failed[/] {failure['uuid']}: {reason}", highlight=False)


# -- search -----------------------------------------------------------------------------------


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="What to search for.")],
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Number of hits.")] = 5,
    customer: Annotated[
        str | None, typer.Option("--customer", help="Also search this customer's records.")
    ] = None,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Hybrid search of the index (policy chunks, plus one customer's records with --customer)."""
    _use_config(config)
    from freshkb.embeddings.embedder import get_embedder
    from freshkb.store.weaviate_store import WeaviateStore, connect

    settings = Settings()
    try:
        embedder = get_embedder(
            settings.embedding_model, settings.embedding_device, settings.embedding_batch_size
        )
        client = connect(settings)
        try:
            hits = WeaviateStore(client).search(
                text, embedder.embed([text])[0], k=k, customer_id=customer
            )
        finally:
            client.close()
    except FreshkbError as exc:
        raise _fail(exc) from exc
    if json_out:
        _print_json([{**asdict(hit), "kind": hit.kind.value} for hit in hits])
        return
    if not hits:
        out.print("no results")
    for rank, hit in enumerate(hits, 1):
        where = f"{hit.source} / {hit.document_key}" + (f" p.{hit.page}" if hit.page else "")
        out.print(
            f"[bold]{rank}. {hit.title}[/]  [dim]{where}  score {hit.score:.3f}[/]", highlight=False
        )
        if hit.section_title and not hit.text.lstrip().startswith(hit.section_title):
            out.print(f"   [italic]{escape(hit.section_title)}[/]", highlight=False)
        out.print(hit.text.strip(), highlight=False, markup=False)
        out.print()


# -- freshness, versions --------------------------------------------------------------------

STATE_STYLE = {"fresh": "green", "stale": "yellow", "failed": "red", "never synced": "dim"}


@app.command()
def status(config: ConfigOption = None, json_out: JsonFlag = False) -> None:
    """Freshness of every source: age against its SLA, state, last failure (from the ledger)."""
    _use_config(config)
    from freshkb.core.config import format_duration
    from freshkb.store.ledger import Ledger

    settings = Settings()
    try:
        declared = load_sources() if config_file_path().is_file() else []
        ledger = Ledger(settings.ledger_database_url)
    except FreshkbError as exc:
        raise _fail(exc) from exc
    try:
        states = ledger.states(declared=declared)
    finally:
        ledger.close()
    if json_out:
        _print_json([state.to_dict() for state in states])
    else:
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
        # Piped into a log or a file, a table 80 columns wide would fold every reason.
        (out if out.is_terminal else Console(width=200)).print(table)
    if any(not state.usable for state in states):
        raise typer.Exit(1)


KindOption = Annotated[
    SourceKind,
    typer.Option("--kind", help="documents (PolicyChunk) or customers (CustomerRecord)."),
]


@app.command()
def versions(
    kind: Annotated[
        SourceKind | None, typer.Option("--kind", help="Only this kind (default: both).")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the index versions behind each alias: model, objects, created, flow run, live."""
    from freshkb.store.weaviate_store import WeaviateStore, connect

    settings = Settings()
    try:
        ensure_weaviate(settings)
        client = connect(settings)
        try:
            found = WeaviateStore(client).versions(kind)
        finally:
            client.close()
    except FreshkbError as exc:
        raise _fail(exc) from exc
    if json_out:
        _print_json([{**asdict(v), "kind": v.kind.value, "complete": v.complete} for v in found])
        return
    table = Table("version", "live", "model", "objects", "created", "promoted", "flow run")
    for v in found:
        state = (
            "[green]live[/]"
            if v.live
            else "[dim]rolled back[/]"
            if v.rolled_back_at
            else "[red]failed[/]"
            if v.failed_at
            else "complete"
            if v.complete
            else "[yellow]incomplete[/]"
        )
        table.add_row(
            v.name,
            state,
            f"{v.model_id} ({v.dimension})",
            str(v.objects),
            v.created_at or "-",
            v.promoted_at or "-",
            v.flow_run_id or "-",
        )
    out.print(table)


@app.command()
def rollback(kind: KindOption, json_out: JsonFlag = False) -> None:
    """Point the alias of KIND back at the previous complete version."""
    from freshkb.store.ledger import Ledger
    from freshkb.store.weaviate_store import WeaviateStore, connect

    settings = Settings()
    try:
        ensure_weaviate(settings)
        client = connect(settings)
        try:
            previous, restored = WeaviateStore(client).rollback(kind)
        finally:
            client.close()
    except FreshkbError as exc:
        raise _fail(exc) from exc
    if restored.retired_at:
        from datetime import datetime

        ledger = Ledger(settings.ledger_database_url)
        try:
            ledger.cap_last_success(
                kind.value, datetime.fromisoformat(restored.retired_at.replace("Z", "+00:00"))
            )
        finally:
            ledger.close()
    result = {"kind": kind.value, "from": previous, "to": restored.name}
    if json_out:
        _print_json(result)
    else:
        out.print(
            f"{kind.value}: answers now read {restored.name} (model {restored.model_id}), "
            f"was {previous}; its data is as of {restored.retired_at or restored.promoted_at}"
        )


@app.command()
def rebuild(kind: KindOption, config: ConfigOption = None, json_out: JsonFlag = False) -> None:
    """Build a new index version of KIND from every declared source, switch when complete."""
    _use_config(config)
    try:
        settings = Settings()
        ensure_weaviate(settings)
        load_sources()
    except FreshkbError as exc:
        raise _fail(exc) from exc
    from freshkb.flows.ingest import rebuild_index

    summary = rebuild_index(kind.value)
    if json_out:
        _print_json(summary)
    else:
        for report in summary.get("reports", []):
            _show_report(report)
        if summary["promoted"]:
            out.print(
                f"[green]promoted[/] {summary['version']} (model {summary['model_id']}); "
                f"previous {summary.get('previous')} kept for `freshkb rollback`"
            )
        else:
            out.print(f"[red]not promoted[/]: {escape(str(summary.get('error')))}", highlight=False)
    if not summary["promoted"]:
        raise typer.Exit(1)


# -- answers ----------------------------------------------------------------------------------

escalations_app = typer.Typer(help="Questions handed to a human.", no_args_is_help=True)
app.add_typer(escalations_app, name="escalations")
llm_app = typer.Typer(
    help="A small local OpenAI-compatible LLM server (llama.cpp, SmolLM2-135M) for laptops "
    "and tests; production uses vLLM.",
    no_args_is_help=True,
)
app.add_typer(llm_app, name="llm")


@llm_app.command("up")
def llm_up(json_out: JsonFlag = False) -> None:
    """Start the local LLM server on 127.0.0.1 ($FRESHKB_LLM_PORT, default 8000)."""
    from freshkb.serving import llm_server

    try:
        state = llm_server.up(llm_server.LlmServerConfig.from_env())
    except FreshkbError as exc:
        raise _fail(exc) from exc
    _show_llm(state, json_out)


@llm_app.command("down")
def llm_down(json_out: JsonFlag = False) -> None:
    """Stop the local LLM server."""
    from freshkb.serving import llm_server

    stopped = llm_server.down(llm_server.LlmServerConfig.from_env())
    if json_out:
        _print_json({"stopped": stopped})
    else:
        out.print("stopped" if stopped else "not running")


@llm_app.command("status")
def llm_status(json_out: JsonFlag = False) -> None:
    """Whether the local LLM server runs, where, and with which model."""
    from freshkb.serving import llm_server

    state = llm_server.status(llm_server.LlmServerConfig.from_env())
    _show_llm(state, json_out)
    if not state.running:
        raise typer.Exit(1)


def _show_llm(state: Any, json_out: bool) -> None:
    if json_out:
        _print_json(asdict(state))
        return
    running = "[green]running[/]" if state.running else "[red]not running[/]"
    out.print(f"LLM server {running} at {state.base_url} (model {state.model or '-'})")
    out.print(f"  log {state.log_file}")


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the HTTP API.")] = 8088,
    config: ConfigOption = None,
) -> None:
    """Start the answer service's HTTP API (OpenAPI docs at /docs)."""
    _use_config(config)
    import uvicorn

    from freshkb.serving.api import create_app
    from freshkb.serving.runtime import build_runtime

    settings = Settings()
    if not settings.api_tokens:
        settings = settings.model_copy(update={"api_tokens": _local_tokens(settings)})
    try:
        ensure_weaviate(settings)
        runtime = build_runtime(settings)
    except FreshkbError as exc:
        raise _fail(exc) from exc
    err.print(
        f"answer service on http://{host}:{port} (docs at /docs); LLM {settings.llm_base_url}"
    )
    try:
        uvicorn.run(
            create_app(settings, runtime.service, runtime.ready),
            host=host,
            port=port,
            log_level="warning",
        )
    finally:
        runtime.close()


def _local_tokens(settings: Settings) -> dict[str, Any]:
    """Tokens for a laptop run with none configured: made once, kept in the data directory."""
    import secrets

    path = settings.data_dir / "api-tokens.json"
    if path.is_file():
        tokens = json.loads(path.read_text())
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tokens = {secrets.token_urlsafe(24): "answer", secrets.token_urlsafe(24): "admin"}
        path.touch(mode=0o600)
        path.write_text(json.dumps(tokens, indent=2))
    err.print(
        f"FRESHKB_API_TOKENS is not set: using the tokens in {path} (answer and admin scopes)"
    )
    return dict(tokens)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The customer's question.")],
    customer: Annotated[
        str | None, typer.Option("--customer", help="Answer for this customer (their records).")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=20, help="Passages to retrieve.")] = 5,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Answer a question from the terminal, as POST /v1/answer does."""
    _use_config(config)
    from freshkb.serving.runtime import build_runtime

    settings = Settings()
    try:
        ensure_weaviate(settings)
        runtime = build_runtime(settings)
    except FreshkbError as exc:
        raise _fail(exc) from exc
    try:
        result = runtime.service.answer(question, customer, k)
    except FreshkbError as exc:
        raise _fail(exc) from exc
    finally:
        runtime.close()
    if json_out:
        _print_json(result.to_dict())
        return
    colour = {"normal": "green", "degraded": "yellow", "escalated": "magenta", "refused": "red"}
    out.print(f"[bold {colour[result.mode]}]{result.mode}[/]", highlight=False)
    out.print(result.answer, highlight=False, markup=False)
    for citation in result.citations:
        page = f" p.{citation.page}" if citation.page else ""
        out.print(
            f"  [dim]{escape(f'[{citation.label}] {citation.source} / {citation.document}')}"
            f"{page} ({escape(citation.title)})[/]",
            highlight=False,
        )
    for reason in result.reasons:
        out.print(f"  [dim]why: {escape(reason)}[/]", highlight=False)
    if result.escalation_id:
        out.print(f"  escalation {result.escalation_id}")


@escalations_app.command("list")
def escalations_list(
    status: Annotated[str | None, typer.Option(help="open or resolved.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List escalated questions, newest first."""
    from freshkb.serving.escalations import EscalationStore

    store = EscalationStore(Settings().ledger_database_url)
    try:
        items = store.find(status)
    finally:
        store.close()
    if json_out:
        _print_json([item.to_dict() for item in items])
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
    from freshkb.serving.escalations import EscalationStore

    store = EscalationStore(Settings().ledger_database_url)
    try:
        item = store.resolve(escalation_id, answer, by)
    except FreshkbError as exc:
        raise _fail(exc) from exc
    finally:
        store.close()
    if json_out:
        _print_json(item.to_dict())
    else:
        out.print(f"resolved {item.id}")


@escalations_app.command("export")
def escalations_export(
    output: Annotated[Path, typer.Option("--output", help="JSON lines file to write.")],
) -> None:
    """Export resolved escalations as evaluation cases (question, truth, ...) in JSON lines."""
    from freshkb.serving.escalations import EscalationStore

    store = EscalationStore(Settings().ledger_database_url)
    try:
        cases = store.export_cases()
    finally:
        store.close()
    output.write_text("".join(json.dumps(case) + "\n" for case in cases))
    err.print(f"wrote {len(cases)} evaluation cases to {output}")


@app.command("sources")
def sources_cmd(config: ConfigOption = None, json_out: JsonFlag = False) -> None:
    """List the sources declared in the config file."""
    _use_config(config)
    try:
        sources = load_sources()
    except FreshkbError as exc:
        raise _fail(exc) from exc
    if json_out:
        _print_json([s.model_dump(mode="json") for s in sources])
        return
    table = Table("name", "kind", "location", "owner")
    for s in sources:
        table.add_row(s.name, s.kind.value, s.location, s.owner)
    out.print(table)


if __name__ == "__main__":
    app()
