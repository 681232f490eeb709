"""A local Prefect server (API, scheduler, UI) and a process worker, managed by freshkb.

One-off `freshkb ingest` runs need none of this: Prefect starts a temporary server for them.
Schedules only fire on a real server, and a worker is what runs a deployment's flow runs, so
`freshkb prefect up` starts both on 127.0.0.1 as managed processes (pid and log files in their
PREFECT_HOME), creates the work pool when it is missing, and waits until the worker is online.
The server keeps its own PREFECT_HOME (database, settings) under freshkb's data directory,
unless the user set one. More workers on the same pool: flows/workers.py (`freshkb workers up
--n N`); `down` stops every one of them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.processes import ManagedProcess

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

HOST = "127.0.0.1"
POOL = "freshkb-local"


@dataclass(frozen=True)
class PrefectServerConfig:
    """Where the local Prefect server listens and keeps its state."""

    home: Path
    port: int = 4200
    pool: str = POOL
    startup_timeout: float = 180.0  # the first start migrates a new database (52 s measured)
    python: str = sys.executable

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> PrefectServerConfig:
        """FRESHKB_PREFECT_PORT (default 4200); PREFECT_HOME, else <data dir>/prefect."""
        settings = settings or Settings()
        home = os.environ.get("PREFECT_HOME") or settings.data_dir / "prefect"
        port = int(os.environ.get("FRESHKB_PREFECT_PORT") or 4200)
        return cls(home=Path(home).expanduser(), port=port)

    def worker_name(self, number: int = 1) -> str:
        """Worker `number`'s name in the pool; the first is the one `prefect up` starts."""
        return f"freshkb-worker-{self._worker_suffix(number)}"

    def _worker_suffix(self, number: int) -> str:
        return str(self.port) if number == 1 else f"{self.port}-{number}"

    @property
    def ui_url(self) -> str:
        """The Prefect UI."""
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        """What PREFECT_API_URL must say for flows and the CLI to use this server."""
        return f"{self.ui_url}/api"

    def server_process(self) -> ManagedProcess:
        """The server's pid and log files."""
        return ManagedProcess(
            pid_file=self.home / f"freshkb-prefect-server-{self.port}.pid",
            log_file=self.home / f"prefect-server-{self.port}.log",
            signature=b"server\x00start",
            signal_group=True,
        )

    def worker_process(self, number: int = 1) -> ManagedProcess:
        """Worker `number`'s pid and log files; a Prefect worker shuts down on SIGINT."""
        suffix = self._worker_suffix(number)
        return ManagedProcess(
            pid_file=self.home / f"freshkb-prefect-worker-{suffix}.pid",
            log_file=self.home / f"prefect-worker-{suffix}.log",
            signature=b"worker\x00start",
            signal_group=True,
            stop_signal=signal.SIGINT,
        )

    def worker_numbers(self) -> list[int]:
        """The numbers of the workers that have a pid file (started, maybe since dead)."""
        numbers = [1] if self.worker_process(1).pid_file.exists() else []
        for pid_file in self.home.glob(f"freshkb-prefect-worker-{self.port}-*.pid"):
            number = pid_file.stem.rsplit("-", 1)[-1]
            numbers += [int(number)] if number.isdigit() else []
        return sorted(numbers)


@dataclass(frozen=True)
class DeploymentSummary:
    """One deployment as `freshkb prefect status` lists it."""

    name: str
    schedules: list[str]
    paused: bool
    concurrency_limit: int | None


@dataclass(frozen=True)
class PrefectStatus:
    """What `freshkb prefect status` reports."""

    running: bool  # the server answers and the worker runs
    server_running: bool
    worker_alive: bool
    api_url: str
    ui_url: str
    pool: str
    prefect_home: str
    server_pid: int | None
    worker_pid: int | None
    server_log: str
    worker_log: str
    deployments: list[DeploymentSummary] = field(default_factory=list)


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when the Prefect API at `api_url` answers its health check."""
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def running_api_url(config: PrefectServerConfig) -> str | None:
    """The API URL of the managed server when its process runs and answers, else None."""
    if config.server_process().is_alive() and is_healthy(config.api_url, timeout=1.0):
        return config.api_url
    return None


@contextmanager
def api_client(api_url: str) -> Iterator[SyncPrefectClient]:
    """A Prefect client of the server at `api_url`, which Prefect's own helpers use too."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        yield client


def target_api_url(config: PrefectServerConfig) -> str:
    """The server deployments go to: PREFECT_API_URL when set, else the managed one."""
    return os.environ.get("PREFECT_API_URL") or config.api_url


def up(config: PrefectServerConfig) -> PrefectStatus:
    """Start the server (unless it runs), create the work pool, start a worker on it."""
    start_server(config)
    ensure_pool(config.api_url, config.pool)
    start_workers(config, [1])
    return status(config)


def down(config: PrefectServerConfig, timeout: float = 30.0) -> bool:
    """Stop every worker, then the server; True if any of them was running."""
    workers = [config.worker_process(n).stop(timeout) for n in config.worker_numbers()]
    server = config.server_process().stop(timeout)
    return any(workers) or server


def status(config: PrefectServerConfig) -> PrefectStatus:
    """Whether the server answers and the worker runs, and what is deployed there."""
    server_pid = config.server_process().read_pid()
    worker_pid = config.worker_process().read_pid()
    healthy = server_pid is not None and is_healthy(config.api_url)
    return PrefectStatus(
        running=healthy and worker_pid is not None,
        server_running=healthy,
        worker_alive=worker_pid is not None,
        api_url=config.api_url,
        ui_url=config.ui_url,
        pool=config.pool,
        prefect_home=str(config.home),
        server_pid=server_pid,
        worker_pid=worker_pid,
        server_log=str(config.server_process().log_file),
        worker_log=str(config.worker_process().log_file),
        deployments=list_deployments(config.api_url) if healthy else [],
    )


def ensure_pool(api_url: str, pool: str) -> None:
    """Create the process work pool `pool` unless it exists."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with api_client(api_url) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=template)
            )


def list_deployments(api_url: str) -> list[DeploymentSummary]:
    """Every deployment of the server, by full name, with its schedules."""
    with api_client(api_url) as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        deployments = client.read_deployments()
    return sorted(
        (
            DeploymentSummary(
                name=f"{flows.get(d.flow_id, '?')}/{d.name}",
                schedules=[_schedule_text(s.schedule) for s in d.schedules],
                paused=bool(d.paused),
                concurrency_limit=d.global_concurrency_limit.limit
                if d.global_concurrency_limit
                else None,
            )
            for d in deployments
        ),
        key=lambda summary: summary.name,
    )


def _schedule_text(schedule: object) -> str:
    cron = getattr(schedule, "cron", None)
    if cron:
        return f"cron {cron}"
    interval = getattr(schedule, "interval", None)
    return f"every {interval.total_seconds():.0f}s" if interval else str(schedule)


def _prefect_env(config: PrefectServerConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(config.home),
        PREFECT_API_URL=config.api_url,  # the UI and the worker talk to this server
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def start_server(config: PrefectServerConfig) -> None:
    """Start the server unless it runs; a ConfigError if another server holds the port."""
    managed = config.server_process()
    if managed.is_alive() and is_healthy(config.api_url):
        return
    if is_healthy(config.api_url):
        raise ConfigError(
            f"another Prefect server already answers on {config.api_url}; stop it, or choose "
            "another port with FRESHKB_PREFECT_PORT"
        )
    config.home.mkdir(parents=True, exist_ok=True)
    command = [config.python, "-m", "prefect", "server", "start"]
    command += ["--host", HOST, "--port", str(config.port)]
    process = managed.start(command, _prefect_env(config))
    timeout = config.startup_timeout
    if not managed.wait_ready(
        process, lambda: is_healthy(config.api_url), timeout, name="Prefect server", poll=0.5
    ):
        managed.stop(10)
        raise TransientError(
            f"the Prefect server did not answer on {config.api_url} within {timeout:.0f}s; "
            f"see {managed.log_file}"
        )


def start_workers(
    config: PrefectServerConfig, numbers: list[int], limit: int | None = None
) -> None:
    """Start the workers `numbers` that do not run, all at once, and wait until each is online.

    With `limit`, a worker runs at most that many flow runs at a time, so the others take the
    rest: `--limit 1` spreads a burst of runs over the workers.
    """
    started = datetime.now(UTC)
    waiting = []
    for number in numbers:
        managed = config.worker_process(number)
        if managed.is_alive():
            continue
        command = [config.python, "-m", "prefect", "worker", "start", "--pool", config.pool]
        command += ["--type", "process", "--name", config.worker_name(number)]
        command += [] if limit is None else ["--limit", str(limit)]
        waiting.append((number, managed, managed.start(command, _prefect_env(config))))
    for number, managed, process in waiting:
        online = partial(_worker_online, config, config.worker_name(number), started)
        if not managed.wait_ready(
            process, online, config.startup_timeout, name=config.worker_name(number)
        ):
            managed.stop(10)
            raise TransientError(
                f"the Prefect worker {config.worker_name(number)} did not come online on pool "
                f"{config.pool} within {config.startup_timeout:.0f}s; see {managed.log_file}"
            )


def _worker_online(config: PrefectServerConfig, name: str, since: datetime) -> bool:
    """True once the worker `name` has sent a heartbeat since `since` (an earlier one of the
    same name can still be listed online)."""
    return any(
        worker.name == name
        and worker.online
        and worker.heartbeat_at is not None
        and worker.heartbeat_at >= since
        for worker in pool_workers(config)
    )


@dataclass(frozen=True)
class PoolWorker:
    """A worker as the server knows it: its name, and whether it sent a heartbeat lately."""

    name: str
    online: bool
    heartbeat_at: datetime | None


def pool_workers(config: PrefectServerConfig) -> list[PoolWorker]:
    """The workers of the pool the server lists, by name."""
    from prefect.client.schemas.objects import WorkerStatus

    with api_client(config.api_url) as client:
        workers = client.read_workers_for_work_pool(config.pool)
    return sorted(
        (
            PoolWorker(
                worker.name,
                worker.status == WorkerStatus.ONLINE,
                worker.last_heartbeat_time,
            )
            for worker in workers
        ),
        key=lambda worker: worker.name,
    )
