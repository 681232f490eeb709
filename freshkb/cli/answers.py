"""Commands that read the index for answers: search it, ask a question, serve the HTTP API."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from freshkb.cli.options import ConfigOption, JsonFlag, settings_for
from freshkb.cli.output import err, fail, out, print_json
from freshkb.core.config import Settings
from freshkb.core.errors import FreshkbError

if TYPE_CHECKING:
    from freshkb.api.starting import Startup
    from freshkb.serving.results import AnswerResult
    from freshkb.serving.runtime import Runtime
    from freshkb.store.protocol import SearchHit

MODE_COLOUR = {"normal": "green", "degraded": "yellow", "escalated": "magenta", "refused": "red"}


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
    from freshkb.embeddings.embedder import select_embedder, settings_for_index
    from freshkb.serving.runtime import index_model
    from freshkb.store.active_config import active_settings
    from freshkb.store.weaviate_store import open_store

    settings = active_settings(settings_for(config))
    try:
        with open_store(settings) as store:
            # the question embedded as the index's vectors were made (int8 or fp32)
            settings = settings_for_index(settings, index_model(store))
            embedder = select_embedder(
                settings.embedding_model,
                settings.embedding_device,
                settings.embedding_batch_size,
                settings.embedding_backend,
                settings.cache_dir,
            )
            vector = embedder.embed([text])[0]
            hits = store.search(
                text, vector, k=k, customer_id=customer, alpha=settings.search_alpha
            )
    except FreshkbError as exc:
        raise fail(exc) from exc
    if json_out:
        print_json([{**asdict(hit), "kind": hit.kind.value} for hit in hits])
        return
    if not hits:
        out.print("no results")
    for rank, hit in enumerate(hits, 1):
        show_hit(rank, hit)


def show_hit(rank: int, hit: SearchHit) -> None:
    """One search hit: rank, title, where it is from, score, then its text."""
    where = f"{hit.source} / {hit.document_key}" + (f" p.{hit.page}" if hit.page else "")
    out.print(
        f"[bold]{rank}. {hit.title}[/]  [dim]{where}  score {hit.score:.3f}[/]", highlight=False
    )
    if hit.section_title and not hit.text.lstrip().startswith(hit.section_title):
        out.print(f"   [italic]{escape(hit.section_title)}[/]", highlight=False)
    out.print(hit.text.strip(), highlight=False, markup=False)
    out.print()


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
    from freshkb.serving.runtime import build_runtime
    from freshkb.store import server
    from freshkb.store.active_config import active_settings

    settings = active_settings(settings_for(config))
    try:
        server.ensure_running(settings, announce=err.print)
        runtime = build_runtime(settings)
    except FreshkbError as exc:
        raise fail(exc) from exc
    try:
        result = runtime.service.answer(question, customer, k)
    except FreshkbError as exc:
        raise fail(exc) from exc
    finally:
        runtime.close()
    if json_out:
        print_json(result.to_dict())
    else:
        show_answer(result)


def show_answer(result: AnswerResult) -> None:
    """The answer's mode, its text, what it cites, why, and its escalation if any."""
    out.print(f"[bold {MODE_COLOUR[result.mode]}]{result.mode}[/]", highlight=False)
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


def serve(
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the HTTP API.")] = 8088,
    config: ConfigOption = None,
) -> None:
    """Start the answer service's HTTP API (OpenAPI docs at /docs).

    The port answers at once (/healthz); the service loads meanwhile, and /readyz says 200
    only once it can answer."""
    import uvicorn

    from freshkb.api.starting import StartingApp, Startup

    settings = settings_for(config)
    runtimes: list[Runtime] = []
    startup = Startup(build=lambda startup: _build_app(settings, startup, runtimes))
    server = uvicorn.Server(
        uvicorn.Config(StartingApp(startup), host=host, port=port, log_level="warning")
    )
    # A failed start ends the process, as it did when the service was built before binding.
    startup.on_failure = lambda exc: setattr(server, "should_exit", True)
    threading.Thread(target=_build_once_bound, args=(server, startup), daemon=True).start()
    err.print(
        f"answer service on http://{host}:{port} (docs at /docs), loading; "
        f"LLM {settings.llm_base_url}"
    )
    try:
        server.run()
    finally:
        for runtime in runtimes:
            runtime.close()
    if startup.error is not None:
        error = startup.error
        raise fail(error) if isinstance(error, FreshkbError) else error


def _build_once_bound(server: Any, startup: Startup) -> None:
    """Begin the build once the port answers: its imports would otherwise hold the interpreter
    while uvicorn starts, and /healthz would wait for them."""
    while not server.started and not server.should_exit:
        time.sleep(0.01)
    startup.begin()


def _build_app(settings: Settings, startup: Startup, runtimes: list[Runtime]) -> Any:
    """The real app: Weaviate running, the answer service built over it (on a thread)."""
    from freshkb.api import create_app
    from freshkb.serving.runtime import build_runtime
    from freshkb.store import server
    from freshkb.store.active_config import active_settings

    startup.step("reading the configuration")
    settings = active_settings(with_api_tokens(settings))
    startup.step("starting Weaviate")
    server.ensure_running(settings, announce=err.print)
    runtime = build_runtime(settings, step=startup.step)
    runtimes.append(runtime)
    startup.step("building the API")
    app = create_app(settings, runtime.service, runtime.ready)
    startup.step("ready")
    err.print(
        f"ready {time.monotonic() - startup.started:.1f}s after start ({startup.breakdown()})",
        highlight=False,
    )
    return app


def with_api_tokens(settings: Settings) -> Settings:
    """The settings, with the local token file's tokens when none are configured."""
    from freshkb.api.tokens import local_tokens

    if settings.api_tokens:
        return settings
    path, tokens = local_tokens(settings.data_dir)
    err.print(
        f"FRESHKB_API_TOKENS is not set: using the tokens in {path} "
        "(answer, admin and upload scopes)"
    )
    return settings.model_copy(update={"api_tokens": tokens})
