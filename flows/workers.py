"""N Prefect process workers on freshkb's work pool, beside the server (`freshkb workers`).

`freshkb prefect up` starts the server and one worker; `workers up --n N` scales the same pool
to N workers on this machine, each with its own name, pid file and log (worker 1 is the one
`prefect up` starts). On several machines, run `prefect worker start --pool freshkb-local
--type process` on each with PREFECT_API_URL pointing at the server: the pool is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from freshkb.flows.prefect_server import (
    PrefectServerConfig,
    ensure_pool,
    is_healthy,
    pool_workers,
    start_server,
    start_workers,
)


@dataclass(frozen=True)
class WorkerState:
    """One managed worker as `freshkb workers status` lists it."""

    number: int
    name: str
    pid: int | None  # None: not running
    online: bool  # the server lists it online (a recent heartbeat)
    heartbeat_at: datetime | None
    log: str


@dataclass(frozen=True)
class WorkersStatus:
    """What `freshkb workers status` reports."""

    running: bool  # the server answers and every worker runs
    server_running: bool
    api_url: str
    pool: str
    prefect_home: str
    workers: list[WorkerState]


def workers_up(config: PrefectServerConfig, count: int, limit: int | None = 1) -> WorkersStatus:
    """The server, the pool and exactly `count` process workers on it, numbered from 1."""
    start_server(config)
    ensure_pool(config.api_url, config.pool)
    for number in config.worker_numbers():
        if number > count:
            config.worker_process(number).stop(30.0)
    start_workers(config, list(range(1, count + 1)), limit)
    return workers_status(config)


def workers_status(config: PrefectServerConfig) -> WorkersStatus:
    """The server and every managed worker: its pid, log, and whether the server sees it."""
    healthy = config.server_process().read_pid() is not None and is_healthy(config.api_url)
    seen = {worker.name: worker for worker in pool_workers(config)} if healthy else {}
    workers = []
    for number in config.worker_numbers():
        name, managed = config.worker_name(number), config.worker_process(number)
        known = seen.get(name)
        online = known is not None and known.online
        heartbeat = known.heartbeat_at if known else None
        log = str(managed.log_file)
        workers.append(WorkerState(number, name, managed.read_pid(), online, heartbeat, log))
    return WorkersStatus(
        running=healthy and bool(workers) and all(w.pid is not None for w in workers),
        server_running=healthy,
        api_url=config.api_url,
        pool=config.pool,
        prefect_home=str(config.home),
        workers=workers,
    )
