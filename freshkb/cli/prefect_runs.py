"""Running flows from the CLI: Prefect's temporary API server, and what to do when it will not
start.

A one-off `freshkb ingest` runs its flow against a temporary ("ephemeral") Prefect API server
that Prefect starts in a subprocess. Prefect gives it 20 s by default, which a busy laptop
(the first run after setup, a build next door) can miss; freshkb gives it 120 s unless
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS says otherwise, and turns a failure into a
message that says what to do. With PREFECT_API_URL set, flows run against that server and no
temporary one is started; without it, when freshkb's own Prefect server (`freshkb prefect up`)
is running, the CLI uses that one: the run is recorded beside the deployed ones, waits for a
deployed run of the same source, and skips the temporary server's start-up (about 20 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from freshkb.cli.temporary_prefect import on_temporary_server
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError

STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_SECONDS = "120"


def allow_slow_prefect_start() -> None:
    """Give Prefect's temporary server 120 s to start (set before Prefect is imported)."""
    os.environ.setdefault(STARTUP_TIMEOUT_VARIABLE, STARTUP_TIMEOUT_SECONDS)


@contextmanager
def explained_prefect_failures() -> Iterator[None]:
    """Flow runs inside go to the temporary server the command started early, if it did
    (cli/temporary_prefect.py); Prefect's 'could not start its temporary server' becomes a
    TransientError with the fix."""
    timeout = float(os.environ.get(STARTUP_TIMEOUT_VARIABLE, STARTUP_TIMEOUT_SECONDS))
    try:
        with on_temporary_server(timeout):
            yield
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        raise TransientError(prefect_start_fix(str(exc))) from exc


def prefect_start_fix(detail: str) -> str:
    """What to tell the user when Prefect's temporary API server did not come up."""
    if os.environ.get("PREFECT_API_URL"):
        raise ConfigError(f"Prefect API at {os.environ['PREFECT_API_URL']} failed: {detail}")
    timeout = os.environ.get(STARTUP_TIMEOUT_VARIABLE, STARTUP_TIMEOUT_SECONDS)
    if "exited with status" in detail:
        what, retry = "exited before it answered", "Rerun"
    else:
        what = f"did not start within {timeout}s (is the machine busy?)"
        retry = f"Rerun, give it longer with {STARTUP_TIMEOUT_VARIABLE}=300"
    return (
        f"Prefect's temporary API server {what}; nothing was ingested. {retry}, or run a "
        "Prefect server once (`prefect server start`) and set "
        "PREFECT_API_URL=http://127.0.0.1:4200/api. "
        f"Prefect said: {detail[:300]}"
    )


def use_running_prefect_server(settings: Settings) -> str | None:
    """Point PREFECT_API_URL at freshkb's own Prefect server when it runs and the variable is
    unset (call before Prefect is imported); returns the URL used, if any."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    from freshkb.flows.prefect_server import PrefectServerConfig, running_api_url

    api_url = running_api_url(PrefectServerConfig.from_env(settings))
    if api_url is not None:
        os.environ["PREFECT_API_URL"] = api_url
        from freshkb.cli.output import err

        err.print(f"runs go to the running Prefect server at {api_url}")
    return api_url
