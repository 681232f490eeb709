"""A Weaviate cluster: the managed nodes' port plan, replication settings, and schema calls that
ride out a Raft leader election.

Port plan of the managed server (`weaviate up --nodes N`): node i (0-based) owns HTTP
`weaviate_http_port + 10*i`, gRPC `weaviate_grpc_port + 10*i`, and its internal block
`weaviate_http_port + 100 + 10*i` .. `+3` (gossip, data, Raft, Raft internal RPC). Node 0 is
the single server freshkb always ran (same ports, same data directory); nodes are 10 ports
apart, so their blocks never overlap. Another freshkb instance on the same host keeps its HTTP
port at least 10*N away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import weaviate
from weaviate.classes.config import ConsistencyLevel
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateConnectionError,
    WeaviateTimeoutError,
)

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError

NODE_STRIDE = 10  # ports between two nodes' HTTP (and gRPC, and internal) ports
INTERNAL_OFFSET = 100  # a node's gossip port above its HTTP port; data, Raft, Raft RPC follow
# A Raft election on loopback took ~5 s (issue 14); across hosts give it several times that.
ELECTION_TIMEOUT = 30.0
# What Weaviate answers while it has no leader, or while the old leader's connection dies.
_ELECTION_SIGNS = ("leader", "connection is closing", "connection refused", "unavailable")

T = TypeVar("T")


@dataclass(frozen=True)
class WeaviateNode:
    """One node of the managed server: its name, ports and data directory."""

    index: int
    name: str
    http_port: int
    grpc_port: int
    gossip_port: int
    data_port: int
    raft_port: int
    raft_rpc_port: int
    data_dir: Path

    @property
    def url(self) -> str:
        """HTTP base URL of the node."""
        return f"http://127.0.0.1:{self.http_port}"

    def ports(self) -> tuple[int, ...]:
        """Every port the node binds."""
        return (
            self.http_port,
            self.grpc_port,
            self.gossip_port,
            self.data_port,
            self.raft_port,
            self.raft_rpc_port,
        )


def managed_nodes(settings: Settings, count: int | None = None) -> list[WeaviateNode]:
    """The nodes of the managed server (settings.weaviate_nodes unless `count`), port plan in
    the module's docstring; a ConfigError when two ports would collide."""
    total = count or settings.weaviate_nodes
    nodes = [managed_node(settings, index) for index in range(total)]
    ports = [port for node in nodes for port in node.ports()]
    clashes = sorted({port for port in ports if ports.count(port) > 1})
    if clashes:
        raise ConfigError(
            f"Weaviate ports {clashes} are used twice with HTTP port {settings.weaviate_http_port},"
            f" gRPC port {settings.weaviate_grpc_port} and {total} nodes: node i uses HTTP+10i, "
            f"gRPC+10i and HTTP+100+10i..+3; move FRESHKB_WEAVIATE_GRPC_PORT out of that range"
        )
    return nodes


def managed_node(settings: Settings, index: int) -> WeaviateNode:
    """Node `index` of the managed server (unchecked: managed_nodes checks a whole plan)."""
    http = settings.weaviate_http_port + NODE_STRIDE * index
    internal = settings.weaviate_http_port + INTERNAL_OFFSET + NODE_STRIDE * index
    # Node 0 keeps the single server's data directory, so a cluster's first node is today's node.
    data_dir = settings.weaviate_data_dir
    if index:
        data_dir = data_dir.parent / f"{data_dir.name}-node{index + 1}"
    return WeaviateNode(
        index=index,
        name=f"freshkb-node{index + 1}",
        http_port=http,
        grpc_port=settings.weaviate_grpc_port + NODE_STRIDE * index,
        gossip_port=internal,
        data_port=internal + 1,
        raft_port=internal + 2,
        raft_rpc_port=internal + 3,
        data_dir=data_dir,
    )


def cluster_env(node: WeaviateNode, nodes: list[WeaviateNode]) -> dict[str, str]:
    """The cluster part of a node's environment: its name, ports, and how it finds the others."""
    env = {
        "CLUSTER_HOSTNAME": node.name,
        "PERSISTENCE_DATA_PATH": str(node.data_dir),
        "GRPC_PORT": str(node.grpc_port),
        "CLUSTER_GOSSIP_BIND_PORT": str(node.gossip_port),
        "CLUSTER_DATA_BIND_PORT": str(node.data_port),
        "RAFT_PORT": str(node.raft_port),
        "RAFT_INTERNAL_RPC_PORT": str(node.raft_rpc_port),
        "RAFT_BOOTSTRAP_EXPECT": str(len(nodes)),
    }
    if len(nodes) == 1:
        env["RAFT_JOIN"] = f"{node.name}:{node.raft_rpc_port}"
    else:
        env["RAFT_JOIN"] = ",".join(f"{each.name}:{each.raft_port}" for each in nodes)
    # Every other node, not just the first: a node restarted while the first is down must
    # still find the cluster (measured: with only the first, it retried in vain).
    others = [f"127.0.0.1:{each.gossip_port}" for each in nodes if each != node]
    if others:
        env["CLUSTER_JOIN"] = ",".join(others)
    return env


@dataclass(frozen=True)
class Replication:
    """How many copies of each object a collection keeps, and how many must answer."""

    factor: int = 1
    write: ConsistencyLevel = ConsistencyLevel.QUORUM
    read: ConsistencyLevel = ConsistencyLevel.ONE

    @classmethod
    def from_settings(cls, settings: Settings) -> Replication:
        """The replication the settings ask for."""
        return cls(
            factor=settings.weaviate_replication_factor,
            write=ConsistencyLevel(settings.weaviate_write_consistency),
            read=ConsistencyLevel(settings.weaviate_read_consistency),
        )

    @property
    def confirming(self) -> ConsistencyLevel:
        """The read level that meets every write at the write level (r + w > factor): a
        write held by a quorum is seen by any quorum, one held by one copy only by all."""
        return _CONFIRMING[self.write]


_CONFIRMING = {
    ConsistencyLevel.ONE: ConsistencyLevel.ALL,
    ConsistencyLevel.QUORUM: ConsistencyLevel.QUORUM,
    ConsistencyLevel.ALL: ConsistencyLevel.ONE,
}


SINGLE_COPY = Replication()  # one node, or a server whose collections keep a single copy


def check_replication(client: weaviate.WeaviateClient, factor: int) -> None:
    """A ConfigError when fewer nodes are up than copies a new collection needs."""
    if factor <= 1:
        return
    nodes = through_election(client.cluster.nodes, "listing Weaviate nodes")
    healthy = [node for node in nodes if node.status == "HEALTHY"]
    if len(healthy) < factor:
        raise ConfigError(
            f"weaviate_replication_factor is {factor} but only {len(healthy)} Weaviate node(s) "
            f"are up ({', '.join(n.name for n in healthy) or 'none'}): start more nodes "
            f"(`freshkb weaviate up --nodes {factor}`) or lower "
            "FRESHKB_WEAVIATE_REPLICATION_FACTOR to at most the number of nodes"
        )


def during_election(exc: Exception) -> bool:
    """True for the errors a schema call meets while the cluster elects a Raft leader."""
    if isinstance(exc, WeaviateConnectionError | WeaviateTimeoutError):
        return True
    if isinstance(exc, UnexpectedStatusCodeError) and exc.status_code >= 500:
        return True
    text = str(exc).lower()
    return isinstance(exc, WeaviateBaseError) and any(sign in text for sign in _ELECTION_SIGNS)


def through_election(
    call: Callable[[], T], what: str, timeout: float = ELECTION_TIMEOUT, pause: float = 0.5
) -> T:
    """Run a schema call, again while the cluster elects a new Raft leader, for up to `timeout`
    seconds after its first failure; `call` must be safe to repeat (check before re-creating
    what may already exist).

    The clock starts at the first failure, not the first try: a call sent just as the leader
    died hangs until the client's own timeout (30 s by default, measured), longer than the
    election it was waiting for.
    """
    deadline: float | None = None
    while True:
        try:
            return call()
        except WeaviateBaseError as exc:
            if not during_election(exc):
                raise
            deadline = deadline or time.monotonic() + timeout
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"{what} failed for {timeout:.0f}s while Weaviate had no Raft leader: {exc}"
                ) from exc
            time.sleep(pause)
            pause = min(pause * 2, 4.0)


def raft_leader(url: str, timeout: float = 2.0) -> str | None:
    """Name of the Raft leader as the node at `url` sees it (/v1/cluster/statistics)."""
    try:
        response = httpx.get(f"{url}/v1/cluster/statistics", timeout=timeout)
        stats = response.json().get("statistics") or []
    except (httpx.HTTPError, ValueError):
        return None
    for entry in stats:
        if entry.get("raft", {}).get("state") == "Leader":
            return str(entry.get("name"))
    leader = next((entry.get("leaderId") for entry in stats if entry.get("leaderId")), None)
    return str(leader) if leader else None
