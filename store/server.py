"""A real Weaviate server on loopback, built from its Go module and managed by freshkb.

No Docker engine is needed: the server binary is built once with `go install` (pinned version)
into the user's cache directory and reused. `up` starts it with a persistent data directory, no
vectorizer modules and telemetry off, and waits until it answers as ready. Users with their own
server set WEAVIATE_URL instead and never touch this module.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.processes import ManagedProcess
from freshkb.store.cluster import (
    WeaviateNode,
    cluster_env,
    managed_node,
    managed_nodes,
    raft_leader,
)

WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"


@dataclass(frozen=True)
class ServerStatus:
    """What `freshkb weaviate status` reports."""

    managed: bool
    running: bool
    url: str
    pid: int | None
    version: str | None
    data_dir: str | None
    binary: str | None
    nodes: tuple[NodeStatus, ...] = ()  # each managed node; empty for WEAVIATE_URL
    leader: str | None = None  # the Raft leader's node name, as the first ready node sees it


@dataclass(frozen=True)
class NodeStatus:
    """One managed node: its ports, process and readiness."""

    name: str
    url: str
    http_port: int
    grpc_port: int
    internal_ports: tuple[int, ...]  # gossip, data, Raft, Raft internal RPC
    pid: int | None
    running: bool
    ready: bool
    data_dir: str
    log: str


def binary_path(settings: Settings) -> Path:
    """Where the Weaviate binary lives: the configured path, else the versioned cache."""
    if settings.weaviate_binary:
        return settings.weaviate_binary
    return settings.cache_dir / "weaviate" / f"v{settings.weaviate_version}" / "weaviate-server"


def build_binary(settings: Settings, log: Path | None = None) -> tuple[Path, float]:
    """Build the pinned Weaviate server with `go install` unless it is cached; return (path, s)."""
    target = binary_path(settings)
    if target.is_file():
        return target, 0.0
    go = shutil.which("go")
    if go is None:
        raise ConfigError(
            "the Weaviate server is not built and `go` is not on PATH: install Go >= 1.26, or "
            "set WEAVIATE_URL to an existing Weaviate server"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    log = log or target.parent / "build.log"
    env = {
        **os.environ,
        "GOBIN": str(target.parent),
        "CGO_ENABLED": "0",
        "GOFLAGS": "-buildvcs=false",
    }
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [go, "install", f"{WEAVIATE_MODULE}@v{settings.weaviate_version}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=target.parent,
            check=False,
        )
    if result.returncode != 0 or not target.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ConfigError(
            f"building Weaviate v{settings.weaviate_version} failed (exit {result.returncode}); "
            f"full log in {log}:\n{tail}"
        )
    return target, time.monotonic() - started


def server_env(
    settings: Settings, node: WeaviateNode | None = None, nodes: list[WeaviateNode] | None = None
) -> dict[str, str]:
    """Environment of a managed node (node 0 by default) of `nodes` (default: as configured):
    loopback only, no modules, no telemetry, its own ports and data directory."""
    nodes = nodes or managed_nodes(settings)
    node = node or nodes[0]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": "",
        "DISABLE_TELEMETRY": "true",
        "QUERY_DEFAULTS_LIMIT": "25",
        "CLUSTER_IN_LOCALHOST": "true",
        "CLUSTER_BIND_ADDR": "127.0.0.1",
        "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
        "GO_PROFILING_DISABLE": "true",
        "PROMETHEUS_MONITORING_ENABLED": "false",
        "LOG_LEVEL": "warning",
        "LIMIT_RESOURCES": "true",
    }
    env.update(cluster_env(node, nodes))
    return env


def _raise_open_file_limit() -> None:
    """Run in the server's child process: allow many open files.

    Each tenant (one per customer) is a shard with its own LSM files, so thousands of customers
    exceed the usual 1024-20000 descriptors. Root may raise the hard limit; others get theirs.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1_048_576
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def node_process(node: WeaviateNode) -> ManagedProcess:
    """A managed node's pid and log files, in its data directory."""
    return ManagedProcess(
        pid_file=node.data_dir / "freshkb-weaviate.pid",
        log_file=node.data_dir / "weaviate.log",
    )


def managed_process(settings: Settings) -> ManagedProcess:
    """The pid and log files of the managed server's first (or only) node."""
    return node_process(managed_nodes(settings, 1)[0])


def known_nodes(settings: Settings) -> list[WeaviateNode]:
    """The managed nodes: as many as configured, and more if earlier `up --nodes` left them."""
    count = settings.weaviate_nodes
    while managed_node(settings, count).data_dir.is_dir():
        count += 1
    return managed_nodes(settings, count)


def local_url(settings: Settings) -> str:
    """HTTP base URL of the managed server."""
    return f"http://127.0.0.1:{settings.weaviate_http_port}"


def is_ready(url: str, api_key: str | None = None, timeout: float = 2.0) -> bool:
    """True when the server at `url` answers its readiness probe."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/v1/.well-known/ready", timeout=timeout, headers=headers)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _version(url: str, api_key: str | None = None) -> str | None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/v1/meta", timeout=2.0, headers=headers)
        return str(response.json().get("version")) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def up(settings: Settings, nodes: int | None = None) -> ServerStatus:
    """Start the managed server's nodes (settings.weaviate_nodes unless `nodes`), building the
    binary first if needed; wait until every node is ready. Nodes already running are kept."""
    if settings.weaviate_url:
        raise ConfigError(
            f"WEAVIATE_URL is set ({settings.weaviate_url}): freshkb uses that server and does "
            "not start its own; unset WEAVIATE_URL to manage a local one"
        )
    plan = managed_nodes(settings, nodes)
    # A node whose process is ours is never started twice, even while it is not ready (busy
    # rejoining, or the cluster electing a leader): it is waited for instead.
    starting = [node for node in plan if not node_process(node).is_alive()]
    for node in starting:
        if is_ready(node.url):
            raise ConfigError(
                f"another Weaviate already answers on {node.url}; stop it, choose another port "
                "with FRESHKB_WEAVIATE_HTTP_PORT, or point WEAVIATE_URL at it"
            )
    started: dict[str, subprocess.Popen[bytes]] = {}
    if starting:
        binary, _ = build_binary(settings)
        # Every node starts before any is waited for: Raft bootstraps once all are there.
        started = {node.name: _start_node(settings, binary, node, plan) for node in starting}
    for node in plan:
        _wait_ready(node, started.get(node.name), settings.weaviate_startup_timeout)
    return status(settings, len(plan))


def _wait_ready(node: WeaviateNode, child: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait until the node answers as ready; TransientError if it exits or takes too long.
    `child`: the process just started (polled, so one that died is reaped, not a zombie)."""
    process = node_process(node)
    deadline = time.monotonic() + timeout
    while not is_ready(node.url):
        exited = child.poll() is not None if child else not process.is_alive()
        if exited:
            process.pid_file.unlink(missing_ok=True)
            raise TransientError(
                f"Weaviate {node.name} exited during start-up; log {process.log_file}:\n"
                f"{process.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise TransientError(
                f"Weaviate {node.name} did not become ready on {node.url} within "
                f"{timeout:.0f}s; see {process.log_file}"
            )
        time.sleep(0.25)


def _start_node(
    settings: Settings, binary: Path, node: WeaviateNode, plan: list[WeaviateNode]
) -> subprocess.Popen[bytes]:
    """Spawn one node (not waiting for it)."""
    node.data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(binary),
        *("--host", "127.0.0.1", "--port", str(node.http_port), "--scheme", "http"),
    ]
    return node_process(node).start(
        command, server_env(settings, node, plan), preexec_fn=_raise_open_file_limit
    )


def down(settings: Settings, timeout: float = 30.0) -> bool:
    """Stop every managed node; True if one was running."""
    stopped = [node_process(node).stop(timeout) for node in known_nodes(settings)]
    return any(stopped)


def ensure_running(
    settings: Settings, announce: Callable[[str], None] | None = None
) -> ServerStatus | None:
    """Start the managed Weaviate unless WEAVIATE_URL names a server or it already runs.

    None when freshkb does not manage the server (WEAVIATE_URL is set); else its status.
    `announce` hears one line before a start, which can take minutes the first time (a build).
    """
    if settings.weaviate_url:
        return None
    current = status(settings)
    if current.running:
        return current
    if announce is not None:
        announce(
            f"starting Weaviate v{settings.weaviate_version} on {local_url(settings)} "
            "(stop it with `freshkb weaviate down`)"
        )
    return up(settings)


def status(settings: Settings, nodes: int | None = None) -> ServerStatus:
    """Is the server freshkb talks to running, and which one is it? Each managed node's state."""
    if settings.weaviate_url:
        key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
        url = settings.weaviate_url.rstrip("/")
        return ServerStatus(
            managed=False,
            running=is_ready(url, key),
            url=url,
            pid=None,
            version=_version(url, key),
            data_dir=None,
            binary=None,
        )
    plan = managed_nodes(settings, nodes) if nodes else known_nodes(settings)
    states = tuple(_node_status(node) for node in plan)
    ready = [state for state in states if state.ready]
    binary = binary_path(settings)
    return ServerStatus(
        managed=True,
        running=bool(states) and len(ready) == len(states),
        url=local_url(settings),
        pid=states[0].pid,
        version=_version(ready[0].url) if ready else None,
        data_dir=str(settings.weaviate_data_dir),
        binary=str(binary) if binary.is_file() else None,
        nodes=states,
        leader=raft_leader(ready[0].url) if ready else None,
    )


def _node_status(node: WeaviateNode) -> NodeStatus:
    pid = node_process(node).read_pid()
    return NodeStatus(
        name=node.name,
        url=node.url,
        http_port=node.http_port,
        grpc_port=node.grpc_port,
        internal_ports=node.ports()[2:],
        pid=pid,
        running=pid is not None,
        ready=pid is not None and is_ready(node.url),
        data_dir=str(node.data_dir),
        log=str(node_process(node).log_file),
    )
