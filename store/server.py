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


def _ports(settings: Settings) -> dict[str, str]:
    """Every port the server binds, all derived from the HTTP and gRPC ports so two instances
    with different HTTP ports never collide (tests run their own beside a user's)."""
    http = settings.weaviate_http_port
    return {
        "GRPC_PORT": str(settings.weaviate_grpc_port),
        "CLUSTER_GOSSIP_BIND_PORT": str(http + 100),
        "CLUSTER_DATA_BIND_PORT": str(http + 101),
        "RAFT_PORT": str(http + 102),
        "RAFT_INTERNAL_RPC_PORT": str(http + 103),
    }


def server_env(settings: Settings) -> dict[str, str]:
    """Environment of the managed server: loopback only, no modules, no telemetry."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PERSISTENCE_DATA_PATH": str(settings.weaviate_data_dir),
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": "",
        "DISABLE_TELEMETRY": "true",
        "QUERY_DEFAULTS_LIMIT": "25",
        "CLUSTER_HOSTNAME": "freshkb-node1",
        "CLUSTER_IN_LOCALHOST": "true",
        "CLUSTER_BIND_ADDR": "127.0.0.1",
        "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
        "RAFT_BOOTSTRAP_EXPECT": "1",
        "GO_PROFILING_DISABLE": "true",
        "PROMETHEUS_MONITORING_ENABLED": "false",
        "LOG_LEVEL": "warning",
        "LIMIT_RESOURCES": "true",
    }
    env.update(_ports(settings))
    env["RAFT_JOIN"] = f"freshkb-node1:{env['RAFT_INTERNAL_RPC_PORT']}"
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


def managed_process(settings: Settings) -> ManagedProcess:
    """The managed server's pid and log files, in its data directory."""
    return ManagedProcess(
        pid_file=settings.weaviate_data_dir / "freshkb-weaviate.pid",
        log_file=settings.weaviate_data_dir / "weaviate.log",
    )


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


def up(settings: Settings) -> ServerStatus:
    """Start the managed server (building it first if needed) and wait until it is ready."""
    if settings.weaviate_url:
        raise ConfigError(
            f"WEAVIATE_URL is set ({settings.weaviate_url}): freshkb uses that server and does "
            "not start its own; unset WEAVIATE_URL to manage a local one"
        )
    url = local_url(settings)
    managed = managed_process(settings)
    if managed.is_alive() and is_ready(url):
        return status(settings)
    if is_ready(url):
        raise ConfigError(
            f"another Weaviate already answers on {url}; stop it, choose another port with "
            "FRESHKB_WEAVIATE_HTTP_PORT, or point WEAVIATE_URL at it"
        )
    binary, _ = build_binary(settings)
    settings.weaviate_data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(binary),
        *("--host", "127.0.0.1", "--port", str(settings.weaviate_http_port), "--scheme", "http"),
    ]
    process = managed.start(command, server_env(settings), preexec_fn=_raise_open_file_limit)
    timeout = settings.weaviate_startup_timeout
    if managed.wait_ready(process, lambda: is_ready(url), timeout, name="Weaviate", poll=0.25):
        return status(settings)
    raise TransientError(
        f"Weaviate did not become ready on {url} within {timeout:.0f}s; see {managed.log_file}"
    )


def down(settings: Settings, timeout: float = 30.0) -> bool:
    """Stop the managed server; True if one was running."""
    return managed_process(settings).stop(timeout)


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


def status(settings: Settings) -> ServerStatus:
    """Is the server freshkb talks to running, and which one is it?"""
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
    url = local_url(settings)
    pid = managed_process(settings).read_pid()
    running = pid is not None and is_ready(url)
    binary = binary_path(settings)
    return ServerStatus(
        managed=True,
        running=running,
        url=url,
        pid=pid,
        version=_version(url) if running else None,
        data_dir=str(settings.weaviate_data_dir),
        binary=str(binary) if binary.is_file() else None,
    )
