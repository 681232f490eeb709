"""A client of the Weaviate server freshkb uses: WEAVIATE_URL if set, else the managed one."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import weaviate
from weaviate.exceptions import WeaviateConnectionError

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError
from freshkb.store.server import local_url

_CLOUD_DOMAINS = (".weaviate.cloud", ".weaviate.network")


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
            )
        return _connect_to_url(settings, settings.weaviate_url.rstrip("/"))
    except WeaviateConnectionError as exc:
        where = settings.weaviate_url or local_url(settings)
        fix = (
            "check WEAVIATE_URL and the API key"
            if settings.weaviate_url
            else "start it with `freshkb weaviate up`"
        )
        raise TransientError(f"cannot reach Weaviate at {where}: {exc}; {fix}") from exc


def _connect_to_url(settings: Settings, url: str) -> weaviate.WeaviateClient:
    """A client of a server the user runs: Weaviate Cloud, or any host with HTTP and gRPC."""
    key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
    auth = weaviate.auth.Auth.api_key(key) if key else None
    if url.endswith(_CLOUD_DOMAINS):
        if auth is None:
            raise ConfigError(f"{url} is a Weaviate Cloud cluster: set WEAVIATE_API_KEY")
        return weaviate.connect_to_weaviate_cloud(cluster_url=url, auth_credentials=auth)
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
    )
