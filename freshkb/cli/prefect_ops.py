"""`freshkb prefect up|down|status` (a local Prefect server, UI and worker) and `freshkb deploy`
(one scheduled deployment per declared source, from freshkb.yaml)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from freshkb.cli.options import ConfigOption, JsonFlag, settings_for
from freshkb.cli.output import fail, out, print_json
from freshkb.cli.servers import ManagedServer
from freshkb.core.errors import ConfigError, FreshkbError
from freshkb.core.sources import AnySource, load_sources

if TYPE_CHECKING:
    from freshkb.flows.prefect_server import PrefectStatus


def prefect_up() -> PrefectStatus:
    """Start the Prefect server and a worker on freshkb's work pool."""
    from freshkb.flows import prefect_server

    return prefect_server.up(prefect_server.PrefectServerConfig.from_env())


def prefect_down() -> bool:
    """Stop the worker and the server; True if either was running."""
    from freshkb.flows import prefect_server

    return prefect_server.down(prefect_server.PrefectServerConfig.from_env())


def prefect_status() -> PrefectStatus:
    """The status of the local Prefect server and worker."""
    from freshkb.flows import prefect_server

    return prefect_server.status(prefect_server.PrefectServerConfig.from_env())


def show_prefect(state: PrefectStatus) -> None:
    """Server, UI, worker, pool and deployments, and how to point flows at the server."""
    server = "[green]running[/]" if state.server_running else "[red]not running[/]"
    worker = "[green]alive[/]" if state.worker_alive else "[red]not running[/]"
    out.print(f"Prefect server {server} at {state.api_url} (pid {state.server_pid or '-'})")
    out.print(f"  UI {state.ui_url}")
    out.print(f"  worker {worker} on pool {state.pool} (pid {state.worker_pid or '-'})")
    out.print(f"  PREFECT_HOME {state.prefect_home}; logs {state.server_log}, {state.worker_log}")
    if state.server_running:
        out.print(f"  CLI runs use it with: export PREFECT_API_URL={state.api_url}")
    for deployment in state.deployments:
        paused = " (paused)" if deployment.paused else ""
        out.print(f"  deployment {deployment.name}: {', '.join(deployment.schedules)}{paused}")


PREFECT = ManagedServer["PrefectStatus"](
    help="Run a local Prefect server (API, scheduler, UI) and a process worker.",
    up=prefect_up,
    down=prefect_down,
    status=prefect_status,
    show=show_prefect,
    up_help="Start a Prefect server on 127.0.0.1 ($FRESHKB_PREFECT_PORT, default 4200) with its "
    "UI, create the work pool freshkb-local, start a process worker on it.",
    down_help="Stop the worker and the server (deployments and run history stay).",
    status_help="Server and UI URLs, whether the worker runs, its pool, the deployments.",
)

WritePrefectYaml = Annotated[
    Path | None,
    typer.Option(
        "--write-prefect-yaml",
        help="Write the deployments to this prefect.yaml (for `prefect deploy --all`) instead "
        "of registering them.",
    ),
]


def deploy(
    config: ConfigOption = None,
    write_prefect_yaml: WritePrefectYaml = None,
    json_out: JsonFlag = False,
) -> None:
    """Register one scheduled deployment per declared source, plus a nightly refresh of all
    and a freshness check, on the Prefect server (`freshkb prefect up`, or $PREFECT_API_URL)."""
    from freshkb.flows import deployments, prefect_server

    try:
        settings = settings_for(config)
        sources = load_sources(settings.config_file)
        if not sources:
            raise ConfigError(f"{settings.config_file} declares no sources")
        if write_prefect_yaml is not None:
            _write_prefect_yaml(sources, settings.config_file, write_prefect_yaml, json_out)
            return
        api_url = prefect_server.target_api_url(
            prefect_server.PrefectServerConfig.from_env(settings)
        )
        if not prefect_server.is_healthy(api_url):
            raise ConfigError(
                f"no Prefect server answers at {api_url}: start one with `freshkb prefect up` "
                "(or set PREFECT_API_URL to yours)"
            )
        config_file = settings.config_file.resolve()
        plans = deployments.deployment_plans(sources, str(config_file), str(config_file.parent))
        registered = deployments.register(plans, sources, api_url)
    except FreshkbError as exc:
        raise fail(exc) from exc
    if json_out:
        print_json({"api_url": api_url, "deployments": [asdict(r) for r in registered]})
        return
    for deployment in registered:
        out.print(f"deployed {deployment.name}: {deployment.schedule}")
    out.print(f"on {api_url}; run one now with: prefect deployment run '{registered[0].name}'")


def _write_prefect_yaml(
    sources: list[AnySource], config_file: Path, target: Path, json_out: bool
) -> None:
    """prefect.yaml beside `target`, each run reading the config file relative to it."""
    import prefect

    from freshkb.flows import deployments

    relative = os.path.relpath(config_file.resolve(), target.resolve().parent)
    plans = deployments.deployment_plans(sources, relative, "{{ $FRESHKB_REPO_DIR }}")
    target.write_text(deployments.prefect_yaml(plans, prefect.__version__))
    if json_out:
        print_json({"written": str(target), "deployments": [p.full_name for p in plans]})
    else:
        out.print(f"wrote {target}: {', '.join(p.full_name for p in plans)}")
