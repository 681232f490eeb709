"""Prefect's temporary API server, started when a command starts instead of at its first flow run.

A one-off command with no Prefect server configured runs its flows against a temporary server
that Prefect starts in a subprocess at the first flow run, and waits for: about 14 s here (20 s
and more when its database is new), after the command has spent seconds importing and
preparing. `start_temporary_server` starts the very same server (`uvicorn` serving
`prefect.server.api.server:create_app`, UI and services off, as Prefect does) when the command
starts, so it boots on the other core meanwhile; `on_temporary_server` then waits for it and
points the flow runs at it. When Prefect's own settings name a server (a profile, prefect.toml),
the early server is stopped unused and runs go there, as before.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from freshkb.core.config import TEMPORARY_PREFECT_MARKER as MARKER
from freshkb.core.errors import TransientError
from freshkb.core.parent_bound import PARENT_VARIABLE
from freshkb.core.processes import ManagedProcess

HOST = "127.0.0.1"
NAME = "The ephemeral Prefect API server"
_PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind
_SETTINGS = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}


@dataclass
class TemporaryServer:
    """A temporary Prefect API server process and where it listens; its pid and log files
    live in a folder of their own, removed when it stops."""

    managed: ManagedProcess
    process: subprocess.Popen[bytes]
    port: int

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @property
    def log(self) -> Path:
        return self.managed.log_file

    def stop(self) -> None:
        self.managed.stop(timeout=5.0)
        shutil.rmtree(self.log.parent, ignore_errors=True)


_server: TemporaryServer | None = None


def start_temporary_server() -> None:
    """Start the temporary server in the background when this command's flow runs will need
    one: PREFECT_API_URL unset in the environment and ephemeral mode not turned off."""
    global _server
    if _server is not None or os.environ.get("PREFECT_API_URL"):
        return
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "").lower() in ("0", "false"):
        return
    if "prefect.settings" in sys.modules:  # imported already (a caller in Python): ask it
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return
    _server = _spawn(_free_port())
    atexit.register(stop_temporary_server)


def stop_temporary_server() -> None:
    """Stop the early server, if one was started (also at exit)."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None


@contextmanager
def on_temporary_server(timeout: float) -> Iterator[str | None]:
    """Flow runs inside go to the early server once it answers (its URL is yielded), unless
    Prefect's settings name a server of their own (None is yielded; runs go there).

    Raises RuntimeError naming the "ephemeral Prefect API server" when it does not come up.
    """
    if _server is None:
        yield None
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    if PREFECT_API_URL.value():
        stop_temporary_server()
        yield None
        return
    server = _await(_server, timeout)
    # The environment too, for the processes the runs start (Dask workers). The server stays
    # up until the process exits: Prefect sends the runs' last logs and events at exit.
    os.environ.update({"PREFECT_API_URL": server.api_url, MARKER: "1"})
    # No UI on this server, so no "View at" link to a page that is never there.
    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
        yield server.api_url


def _spawn(port: int) -> TemporaryServer:
    # Bound to this process: a command killed outright (SIGKILL) runs no exit handler, and the
    # server, in a session of its own, would otherwise outlive it (core/parent_bound.py).
    command = [sys.executable, "-m", "freshkb.core.parent_bound", "uvicorn", "--factory"]
    command += ["prefect.server.api.server:create_app", "--host", HOST, "--port", str(port)]
    command += ["--log-level", "error", "--lifespan", "on"]
    return _run(command, port)


def _run(command: list[str], port: int) -> TemporaryServer:
    """`command` started as a managed process (core/processes.py) in a folder of its own."""
    folder = Path(tempfile.mkdtemp(prefix="freshkb-prefect-"))
    managed = ManagedProcess(folder / "server.pid", folder / "server.log")
    env = {**os.environ, **_SETTINGS, PARENT_VARIABLE: str(os.getpid())}
    return TemporaryServer(managed, managed.start(command, env), port)


def _await(server: TemporaryServer, timeout: float) -> TemporaryServer:
    """The server once /health answers 200 (started again on another port if this one was
    taken meanwhile); RuntimeError with its log when it exits or does not answer in time."""
    global _server
    import httpx

    def healthy() -> bool:
        try:
            return httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    deadline = time.monotonic() + timeout
    while True:
        try:
            left = deadline - time.monotonic()
            if server.managed.wait_ready(server.process, healthy, left, NAME, poll=0.1):
                return server
            problem = "Timed out while attempting to connect to ephemeral Prefect API server."
        except TransientError:
            status = server.process.returncode
            if status == _PORT_IN_USE:
                server.stop()
                server = _server = _spawn(_free_port())
                continue
            problem = f"The ephemeral Prefect API server exited with status {status}:"
        tail = server.managed.log_tail()
        stop_temporary_server()
        raise RuntimeError(f"{problem} {tail}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])
