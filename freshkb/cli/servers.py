"""The two servers freshkb can run on a laptop, Weaviate and a small LLM, each with the same
up / down / status commands, built by one factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Protocol, TypeVar

import typer

from freshkb.cli.options import JsonFlag
from freshkb.cli.output import err, fail, out, print_json
from freshkb.core.config import Settings
from freshkb.core.errors import FreshkbError

if TYPE_CHECKING:
    from freshkb.serving.llm_server import LlmServerStatus
    from freshkb.store.server import ServerStatus


class ServerState(Protocol):
    """What a managed server's status is, as far as the commands care: a dataclass that says
    whether the server runs."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def running(self) -> bool:
        """True when the server answers."""
        ...


State = TypeVar("State", bound=ServerState)


@dataclass(frozen=True)
class ManagedServer(Generic[State]):
    """A server's three operations, the help of its commands, and how its status reads."""

    help: str
    up: Callable[[], State]
    down: Callable[[], bool]
    status: Callable[[], State]
    show: Callable[[State], None]
    up_help: str
    down_help: str
    status_help: str
    # A server that runs as several nodes: `up --nodes N` starts N (None: as configured).
    up_nodes: Callable[[int | None], State] | None = None


NodesOption = Annotated[
    int | None,
    typer.Option(
        "--nodes", min=1, help="Nodes to run (default: $FRESHKB_WEAVIATE_NODES, which is 1)."
    ),
]


def server_commands(managed: ManagedServer[State]) -> typer.Typer:
    """The `up`, `down` and `status` commands of one managed server, as a command group."""
    group = typer.Typer(help=managed.help, no_args_is_help=True)

    def show(state: State, json_out: bool) -> None:
        if json_out:
            print_json(asdict(state))
        else:
            managed.show(state)

    def start(up: Callable[[], State], json_out: bool) -> None:
        try:
            state = up()
        except FreshkbError as exc:
            raise fail(exc) from exc
        show(state, json_out)

    if managed.up_nodes is None:

        @group.command("up", help=managed.up_help)
        def up(json_out: JsonFlag = False) -> None:
            start(managed.up, json_out)

    else:
        up_nodes = managed.up_nodes

        @group.command("up", help=managed.up_help)
        def up_cluster(nodes: NodesOption = None, json_out: JsonFlag = False) -> None:
            start(lambda: up_nodes(nodes), json_out)

    @group.command("down", help=managed.down_help)
    def down(json_out: JsonFlag = False) -> None:
        stopped = managed.down()
        if json_out:
            print_json({"stopped": stopped})
        else:
            out.print("stopped" if stopped else "not running")

    @group.command("status", help=managed.status_help)
    def status(json_out: JsonFlag = False) -> None:
        state = managed.status()
        show(state, json_out)
        if not state.running:
            raise typer.Exit(1)

    return group


# -- Weaviate -----------------------------------------------------------------------------------


def weaviate_up(nodes: int | None = None) -> ServerStatus:
    """Build the pinned Weaviate the first time, then start its nodes (as configured unless
    `nodes`) and wait until every one is ready."""
    from freshkb.store import server

    settings = Settings()
    if not server.binary_path(settings).is_file():
        err.print(
            f"building Weaviate v{settings.weaviate_version} with `go install` "
            "(first time only, several minutes)..."
        )
        _, seconds = server.build_binary(settings)
        err.print(f"built in {seconds:.0f}s: {server.binary_path(settings)}")
    return server.up(settings, nodes)


def weaviate_down() -> bool:
    """Stop the managed Weaviate; True if it was running."""
    from freshkb.store import server

    return server.down(Settings())


def weaviate_status() -> ServerStatus:
    """The status of the Weaviate freshkb talks to."""
    from freshkb.store import server

    return server.status(Settings())


def show_weaviate(status: ServerStatus) -> None:
    """Whether Weaviate runs, where, which version, and who manages it."""
    state = "[green]running[/]" if status.running else "[red]not running[/]"
    out.print(
        f"Weaviate {state} at {status.url}" + (f" (v{status.version})" if status.version else "")
    )
    if status.managed and len(status.nodes) > 1:
        out.print(f"  managed by freshkb: {len(status.nodes)} nodes, Raft leader {status.leader}")
        for node in status.nodes:
            ready = "[green]ready[/]" if node.ready else "[red]down[/]"
            out.print(
                f"  {node.name} {ready} {node.url} gRPC {node.grpc_port} internal "
                f"{'/'.join(map(str, node.internal_ports))} pid {node.pid}; data {node.data_dir}"
            )
        out.print(f"  binary {status.binary or 'not built yet'}")
    elif status.managed:
        out.print(f"  managed by freshkb; pid {status.pid}; data {status.data_dir}")
        out.print(f"  binary {status.binary or 'not built yet'}")
    else:
        out.print("  external server (WEAVIATE_URL)")


WEAVIATE = ManagedServer["ServerStatus"](
    help="Run the local Weaviate server freshkb manages.",
    up=weaviate_up,
    up_nodes=weaviate_up,
    down=weaviate_down,
    status=weaviate_status,
    show=show_weaviate,
    up_help="Build (first time only) and start Weaviate on 127.0.0.1, one node or a cluster "
    "(--nodes); wait until every node is ready. Node i uses HTTP port +10i, gRPC port +10i.",
    down_help="Stop every managed Weaviate node (their data stays in the data directory).",
    status_help="Show whether Weaviate is running, where, which version, and each node.",
)


# -- the local LLM ------------------------------------------------------------------------------


def llm_up() -> LlmServerStatus:
    """Start the local LLM server configured by the environment."""
    from freshkb.serving import llm_server

    return llm_server.up(llm_server.LlmServerConfig.from_env())


def llm_down() -> bool:
    """Stop the local LLM server; True if it was running."""
    from freshkb.serving import llm_server

    return llm_server.down(llm_server.LlmServerConfig.from_env())


def llm_status() -> LlmServerStatus:
    """The status of the local LLM server."""
    from freshkb.serving import llm_server

    return llm_server.status(llm_server.LlmServerConfig.from_env())


def show_llm(state: LlmServerStatus) -> None:
    """Whether the LLM server runs, where, with which model, and its log."""
    running = "[green]running[/]" if state.running else "[red]not running[/]"
    out.print(f"LLM server {running} at {state.base_url} (model {state.model or '-'})")
    out.print(f"  log {state.log_file}")


LLM = ManagedServer["LlmServerStatus"](
    help="A small local OpenAI-compatible LLM server (llama.cpp, SmolLM2-135M) for laptops "
    "and tests; production uses vLLM.",
    up=llm_up,
    down=llm_down,
    status=llm_status,
    show=show_llm,
    up_help="Start the local LLM server on 127.0.0.1 ($FRESHKB_LLM_PORT, default 8000).",
    down_help="Stop the local LLM server.",
    status_help="Whether the local LLM server runs, where, and with which model.",
)
