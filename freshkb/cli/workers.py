"""`freshkb workers up|down|status`: a local Prefect server and N process workers on its pool,
each with its own name, pid file and log, so deployed runs spread over them."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from freshkb.cli.options import JsonFlag
from freshkb.cli.output import fail, out, print_json
from freshkb.core.errors import FreshkbError

if TYPE_CHECKING:
    from freshkb.flows.workers import WorkersStatus

workers_app = typer.Typer(
    help="Run a local Prefect server and N process workers on the pool freshkb-local.",
    no_args_is_help=True,
)

WorkerCount = Annotated[int, typer.Option("--n", min=1, help="How many workers to run.")]
RunLimit = Annotated[
    int,
    typer.Option(
        "--limit",
        min=0,
        help="Flow runs one worker runs at a time (0: no limit). 1 spreads a burst of runs "
        "over the workers.",
    ),
]


@workers_app.command("up")
def up(count: WorkerCount = 2, limit: RunLimit = 1, json_out: JsonFlag = False) -> None:
    """Start the Prefect server (unless it runs) and exactly N workers (stopping any beyond)."""
    from freshkb.flows.prefect_server import PrefectServerConfig
    from freshkb.flows.workers import workers_up

    try:
        state = workers_up(PrefectServerConfig.from_env(), count, limit or None)
    except FreshkbError as exc:
        raise fail(exc) from exc
    show(state, json_out)


@workers_app.command("down")
def down(json_out: JsonFlag = False) -> None:
    """Stop every worker (SIGINT), then the server; deployments and run history stay."""
    from freshkb.flows.prefect_server import PrefectServerConfig
    from freshkb.flows.prefect_server import down as stop_all

    stopped = stop_all(PrefectServerConfig.from_env())
    if json_out:
        print_json({"stopped": stopped})
    else:
        out.print("stopped" if stopped else "not running")


@workers_app.command("status")
def status(json_out: JsonFlag = False) -> None:
    """The server, and each worker: pid, whether the server sees it online, its log."""
    from freshkb.flows.prefect_server import PrefectServerConfig
    from freshkb.flows.workers import workers_status

    state = workers_status(PrefectServerConfig.from_env())
    show(state, json_out)
    if not state.running:
        raise typer.Exit(1)


def show(state: WorkersStatus, json_out: bool) -> None:
    """The status as JSON, or one line for the server and one per worker."""
    if json_out:
        print_json(asdict(state))
        return
    server = "[green]running[/]" if state.server_running else "[red]not running[/]"
    out.print(f"Prefect server {server} at {state.api_url}; pool {state.pool}")
    for worker in state.workers:
        running = f"pid {worker.pid}" if worker.pid else "[red]not running[/]"
        online = "online" if worker.online else "not seen online"
        out.print(f"  {worker.name}: {running}, {online}; log {worker.log}")
    if not state.workers:
        out.print("  no workers: start them with `freshkb workers up --n 2`")
