"""A client of the Weaviate server freshkb uses: WEAVIATE_URL if set, else the managed one,
and a probe of whether that server is up, so that callers fail fast while it is not."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import weaviate
from weaviate.classes.init import AdditionalConfig, GrpcConfig
from weaviate.exceptions import WeaviateConnectionError

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError
from freshkb.store.server import local_url

_CLOUD_DOMAINS = (".weaviate.cloud", ".weaviate.network")

# gRPC backs off reconnecting to a server that refused it, up to 120 s by default: a server that
# is back would go unused for up to two minutes. Capped at a second here.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def client_config() -> AdditionalConfig:
    """The client options freshkb connects with (the gRPC reconnect backoff above)."""
    return AdditionalConfig(grpc_config=GrpcConfig(channel_options=CHANNEL_OPTIONS))


@dataclass(frozen=True)
class Endpoint:
    """Host, port and TLS flag of a server address."""

    host: str
    port: int
    secure: bool


def endpoint(url: str) -> Endpoint:
    """Host, port and TLS flag of a URL, with the scheme's default port."""
    parsed = httpx.URL(url)
    secure = parsed.scheme == "https"
    return Endpoint(parsed.host, parsed.port or (443 if secure else 80), secure)


def connect(settings: Settings) -> weaviate.WeaviateClient:
    """A connected client: WEAVIATE_URL (with its API key) if set, else the managed local server."""
    try:
        if settings.weaviate_url is None:
            return weaviate.connect_to_local(
                host="127.0.0.1",
                port=settings.weaviate_http_port,
                grpc_port=settings.weaviate_grpc_port,
                additional_config=client_config(),
            )
        return _connect_to_url(settings, settings.weaviate_url.rstrip("/"))
    except WeaviateConnectionError as exc:
        where = settings.weaviate_url or local_url(settings)
        raise TransientError(
            f"cannot reach Weaviate at {where}: {exc}; {unreachable_fix(settings)}"
        ) from exc


def unreachable_fix(settings: Settings) -> str:
    """What to do when the server the settings name does not answer."""
    if settings.weaviate_url:
        return "check WEAVIATE_URL and the API key"
    return "start it with `freshkb weaviate up`"


def _connect_to_url(settings: Settings, url: str) -> weaviate.WeaviateClient:
    """A client of a server the user runs: Weaviate Cloud, or any host with HTTP and gRPC."""
    key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
    auth = weaviate.auth.Auth.api_key(key) if key else None
    if url.endswith(_CLOUD_DOMAINS):
        if auth is None:
            raise ConfigError(f"{url} is a Weaviate Cloud cluster: set WEAVIATE_API_KEY")
        return weaviate.connect_to_weaviate_cloud(
            cluster_url=url, auth_credentials=auth, additional_config=client_config()
        )
    http = endpoint(url)
    grpc = endpoint(settings.weaviate_grpc_url) if settings.weaviate_grpc_url else None
    return weaviate.connect_to_custom(
        http_host=http.host,
        http_port=http.port,
        http_secure=http.secure,
        grpc_host=grpc.host if grpc else http.host,
        grpc_port=grpc.port if grpc else 50051,
        grpc_secure=grpc.secure if grpc else http.secure,
        auth_credentials=auth,
        additional_config=client_config(),
    )


def server_url(settings: Settings) -> str:
    """The HTTP address of the server freshkb uses (https when WEAVIATE_URL names no scheme,
    as a Weaviate Cloud address may)."""
    url = (settings.weaviate_url or local_url(settings)).rstrip("/")
    return url if "://" in url else f"https://{url}"


class Liveness:
    """Is the server up? Its liveness endpoint, asked at most once per `interval` seconds.

    The client retries a gRPC call to a server that is down for a minute (1+2+..+32 s) before
    it gives up, so an answer would wait that long to be escalated. With this gate only the
    calls in the first `interval` of an outage wait; later ones fail at once with a
    TransientError, and a failed call has the next one ask the server again (an `interval` of 0
    asks before every call, as the managed cluster's failover does). `timeout` only
    bounds a server that does not answer at all (a refused connection fails at once): it is
    generous, so that a slow network or a busy server is not taken for an outage.
    """

    def __init__(
        self,
        server: str,
        interval: float = 1.0,
        timeout: float = 3.0,
        fix: str = "check that Weaviate runs there",
    ):
        self.server = server.rstrip("/")
        self.url = f"{self.server}/v1/.well-known/live"
        self.interval = interval
        self.fix = fix
        self._http = httpx.Client(timeout=timeout)
        self._lock = threading.Lock()
        self._asked_at = float("-inf")
        self._alive = True

    def is_up(self) -> bool:
        """Whether the server was up at the last probe (asked now when that is due)."""
        if time.monotonic() - self._asked_at >= self.interval:
            self._ask()
        return self._alive

    def check(self) -> None:
        """Return when the server was up at the last probe; TransientError when it was not."""
        if not self.is_up():
            raise TransientError(f"Weaviate at {self.server} is not answering; {self.fix}")

    def recheck(self) -> None:
        """A call failed: ask the server again before the next one."""
        self._asked_at = float("-inf")

    def _ask(self) -> None:
        wanted = time.monotonic()
        with self._lock:  # one probe at a time; threads that waited use its verdict
            if self._asked_at >= wanted or time.monotonic() - self._asked_at < self.interval:
                return
            try:
                # Any answer below 500 is a server that is up (a proxy in front may ask for
                # credentials, or not route the path); a 5xx is a proxy whose server is gone.
                self._alive = self._http.get(self.url).status_code < 500
            except httpx.HTTPError:
                self._alive = False
            self._asked_at = time.monotonic()

    def close(self) -> None:
        """Release the probe's connection."""
        self._http.close()
