"""The index in Weaviate: one object that writes, reads and versions freshkb's collections.

Each job has its own module: connection (a client), schema (the collections' properties),
collections (which physical collection a kind uses), description and versions (the versions
behind each alias), state (what a source has in the index), writes, search. WeaviateStore puts
them behind the contracts of store/protocol.py, so callers never reach into the client.

Failover: a store opened with `WeaviateStore.connected(settings)` on the managed cluster knows
every node. Before each call it asks its node whether it is alive (an HTTP probe, a millisecond
on a LAN) and, when not, reconnects to the first live node; a call that fails while its node
died is repeated once on the next node (every call here is safe to repeat: writes are
idempotent). Without the probe a dead node costs a minute: the client retries an unavailable
gRPC node with backoff (1+2+..+32 s). A multi-host cluster sits behind a load balancer instead
(WEAVIATE_URL), which does the same for every client. A store of one server probes it at most
once a second instead: while it is down, calls fail at once. Both ask by the same rule
(connection.Liveness: any answer below 500 is a server that is up).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar

import weaviate
from weaviate.collections import Collection
from weaviate.exceptions import WeaviateBaseError

from freshkb.core.config import Settings
from freshkb.core.errors import FreshkbError, TransientError
from freshkb.core.records import EmbeddedChunk, ExpectedDocument, SourceKind, StoredDocument
from freshkb.store import search as _search
from freshkb.store import state as _state
from freshkb.store import writes as _writes
from freshkb.store.cluster import SINGLE_COPY, Replication, WeaviateNode
from freshkb.store.collections import LiveCollections
from freshkb.store.connection import (
    Liveness,
    client_config,
    connect,
    server_url,
    unreachable_fix,
)
from freshkb.store.description import VersionDescription
from freshkb.store.protocol import IndexVersion, SearchHit, WriteResult
from freshkb.store.recent import RecentReads
from freshkb.store.schema import ALIASES, CUSTOMER_ALIAS, POLICY_ALIAS
from freshkb.store.server import known_nodes
from freshkb.store.versions import VersionCatalog

__all__ = [
    "ALIASES",
    "CUSTOMER_ALIAS",
    "POLICY_ALIAS",
    "IndexVersion",
    "SearchHit",
    "WeaviateStore",
    "WriteResult",
    "connect",
    "open_store",
]


@contextmanager
def open_store(settings: Settings) -> Iterator[WeaviateStore]:
    """A store on its own connection, closed when the block ends (also when it raises)."""
    store = WeaviateStore.connected(settings)
    try:
        yield store
    finally:
        store.close()


T = TypeVar("T")


class NodeFailover:
    """The managed cluster's nodes in order: which one answers, and a client of it."""

    def __init__(self, nodes: Sequence[WeaviateNode], probe_timeout: float = 0.5):
        self.nodes = list(nodes)
        self.current = self.nodes[0]
        # Asked before every call (interval 0), by the rule a single server's gate uses.
        self._probes = {
            node.name: Liveness(node.url, interval=0.0, timeout=probe_timeout) for node in nodes
        }

    def alive(self) -> bool:
        """True when the node in use answers its liveness probe."""
        return self._probes[self.current.name].is_up()

    def close(self) -> None:
        """Release the probes' connections."""
        for probe in self._probes.values():
            probe.close()

    def connect(self) -> weaviate.WeaviateClient:
        """A client of the first node (from the one in use on) that accepts a connection."""
        start = self.nodes.index(self.current)
        failures = []
        for node in self.nodes[start:] + self.nodes[:start]:
            try:
                client = weaviate.connect_to_local(
                    host="127.0.0.1",
                    port=node.http_port,
                    grpc_port=node.grpc_port,
                    additional_config=client_config(),
                )
            except WeaviateBaseError as exc:
                failures.append(f"{node.name} ({node.url}): {exc}")
                continue
            self.current = node
            return client
        raise TransientError(
            "no Weaviate node answers: " + "; ".join(failures) + "; start the cluster with "
            "`freshkb weaviate up`"
        )


class WeaviateStore:
    """The freshkb collections of one Weaviate server (IndexWriter, IndexReader, IndexVersions)."""

    def __init__(
        self,
        client: weaviate.WeaviateClient,
        replication: Replication = SINGLE_COPY,
        failover: NodeFailover | None = None,
        liveness: Liveness | None = None,
    ):
        self.client = client
        self._liveness = liveness
        self._live = LiveCollections(client, replication)
        self._versions = VersionCatalog(self._live)
        self._failover = failover
        # The kind -> collection pins, shared with the routing (tests clear it to re-read).
        self._physical = self._live.physical
        self._known_terms = _search.KnownTerms()
        self._recent = RecentReads()

    @classmethod
    def connected(cls, settings: Settings) -> WeaviateStore:
        """A store of the server the settings name, with their replication; on a managed
        cluster of several nodes, one that fails over to the next live node; on one server,
        one that fails fast while the server is down (connection.Liveness)."""
        replication = Replication.from_settings(settings)
        if settings.weaviate_url is None:
            nodes = known_nodes(settings)
            if len(nodes) > 1:
                failover = NodeFailover(nodes)
                return cls(failover.connect(), replication, failover)
        liveness = Liveness(server_url(settings), fix=unreachable_fix(settings))
        return cls(connect(settings), replication, liveness=liveness)

    def _resilient(self, call: Callable[[], T]) -> T:
        """Run `call` on a live node: move off a dead one first, and repeat a call that failed
        because its node died on the next node. With one server: fail at once while it is down."""
        if self._failover is None:
            return self._gated(call)
        if not self._failover.alive():
            self._reconnect()
        try:
            return call()
        except (FreshkbError, WeaviateBaseError):
            if self._failover.alive():
                raise
            self._reconnect()
            return call()

    def _gated(self, call: Callable[[], T]) -> T:
        """Run `call` unless the server was down at the last probe; a failure has the next call
        probe it again."""
        if self._liveness is None:
            return call()
        self._liveness.check()
        try:
            return call()
        except (FreshkbError, WeaviateBaseError):
            self._liveness.recheck()
            raise

    def _reconnect(self) -> None:
        """Swap the client for one of the next live node; the old one is closed."""
        assert self._failover is not None
        old, self.client = self.client, self._failover.connect()
        self._live.client = self.client
        with contextlib.suppress(Exception):  # its node is gone: closing may fail, harmlessly
            old.close()

    # -- connection -----------------------------------------------------------------------

    def is_ready(self) -> bool:
        """True when the server answers its readiness probe."""
        try:
            return bool(self._resilient(lambda: self.client.is_ready()))
        except Exception:  # a dead connection is "not ready", whatever the client raises
            return False

    def close(self) -> None:
        """Close the connection."""
        self.client.close()
        if self._liveness is not None:
            self._liveness.close()
        if self._failover is not None:
            self._failover.close()

    # -- schema and versions --------------------------------------------------------------

    def ensure_schema(
        self, kind: SourceKind, model_id: str, dimension: int, flow_run_id: str = "local"
    ) -> str:
        """The live collection of `kind`, created (as version 1) if there is none yet."""
        return self._resilient(
            lambda: self._versions.ensure_schema(kind, model_id, dimension, flow_run_id)
        )

    def use_collection(self, kind: SourceKind, name: str) -> None:
        """Write to and read from `name` instead of the alias target (a rebuild in progress)."""
        self._versions.use_collection(kind, name)

    def version_description(self, name: str) -> VersionDescription:
        """What the description of collection `name` records of its version."""
        return self._versions.description(name)

    def collection_model(self, name: str) -> tuple[str | None, int | None]:
        """The (model id, dimension) a collection was created for, from its description."""
        record = self._versions.description(name)
        return (record.model_id, record.dimension) if record.model_id else (None, None)

    def vectors_model(self, kind: SourceKind = SourceKind.DOCUMENTS) -> str | None:
        """The model id the vectors of `kind`'s collection in use were made with; where `kind`
        has none yet, the other kind's (a deployment embeds in one precision); None before
        any ingest."""
        for each in (kind, *(other for other in SourceKind if other is not kind)):
            name = self.live_collection(each)
            if name:
                return self.collection_model(name)[0]
        return None

    def create_version(
        self, kind: SourceKind, model_id: str, dimension: int, flow_run_id: str
    ) -> str:
        """Create the next, empty version of `kind`'s collection (not yet live); its name."""
        return self._versions.create_version(kind, model_id, dimension, flow_run_id)

    def promote(self, kind: SourceKind, name: str) -> str | None:
        """Point `kind`'s alias at `name` (answers switch at once); returns the previous target."""
        return self._versions.promote(kind, name)

    def rollback(self, kind: SourceKind) -> tuple[str, IndexVersion]:
        """Point the alias back at the most recently promoted earlier version; (from, to)."""
        return self._versions.rollback(kind)

    def versions(
        self, kind: SourceKind | None = None, count_objects: bool = True
    ) -> list[IndexVersion]:
        """Every freshkb collection version (of one kind, or all), oldest first."""
        return self._versions.versions(kind, count_objects)

    def mark_failed(self, name: str) -> None:
        """Mark a version whose rebuild did not complete; it is never promoted."""
        self._versions.mark_failed(name)

    def drop_failed_versions(self, kind: SourceKind) -> list[str]:
        """Delete the versions of `kind` left by failed rebuilds; their names."""
        return self._versions.drop_failed_versions(kind)

    def drop_version(self, name: str) -> None:
        """Delete a version that is not live (an incomplete rebuild, or an old one)."""
        self._versions.drop_version(name)

    def live_collection(self, kind: SourceKind) -> str | None:
        """The physical collection the alias of `kind` points at, if there is one."""
        return self._live.live_collection(kind)

    def ensure_tenants(self, customer_ids: Iterable[str]) -> None:
        """Create the tenants of these customers that do not exist yet."""
        self._live.ensure_tenants(customer_ids)

    def _collection(self, kind: SourceKind, customer_id: str | None = None) -> Collection:
        return self._live.collection(kind, customer_id)

    # -- state ----------------------------------------------------------------------------

    def stored_documents(self, source: str, kind: SourceKind) -> dict[str, StoredDocument]:
        """Per document of `source`: its content hash, expected and present chunk counts."""
        return self._resilient(lambda: _state.stored_documents(self._live, source, kind))

    def count(self, kind: SourceKind, source: str | None = None) -> int:
        """Objects of a kind (optionally of one source) in the live collection."""
        return self._resilient(lambda: _state.count(self._live, kind, source))

    def missing(self, kind: SourceKind, expected: Sequence[ExpectedDocument]) -> list[str]:
        """UUIDs of expected chunks absent at the level that sees every acknowledged write."""
        return self._resilient(lambda: _state.missing(self._live, kind, expected))

    # -- writes ---------------------------------------------------------------------------

    def upsert(
        self,
        embedded: Sequence[EmbeddedChunk],
        *,
        ingested_at: datetime,
        flow_run_id: str,
        model_id: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> WriteResult:
        """Write chunks with their vectors (gRPC batches); existing UUIDs are overwritten."""
        return self._resilient(
            lambda: _writes.upsert(
                self._live,
                embedded,
                ingested_at=ingested_at,
                flow_run_id=flow_run_id,
                model_id=model_id,
                progress=progress,
            )
        )

    def delete_documents(self, kind: SourceKind, documents: Iterable[StoredDocument]) -> int:
        """Delete every chunk of these documents; returns objects deleted."""
        gone = list(documents)
        return self._resilient(lambda: _writes.delete_documents(self._live, kind, gone))

    def delete_positions_from(
        self, kind: SourceKind, document_id: str, first_gone: int, customer_id: str | None
    ) -> int:
        """Delete a document's chunks at positions >= first_gone (it got shorter)."""
        return self._resilient(
            lambda: _writes.delete_positions_from(
                self._live, kind, document_id, first_gone, customer_id
            )
        )

    # -- reads ----------------------------------------------------------------------------

    def unknown_terms(
        self,
        terms: Sequence[str],
        *,
        customer_id: str | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[str]:
        """The terms no chunk of `sources`, nor the customer's records, contains (store/search)."""
        return self._resilient(
            lambda: _search.unknown_terms(
                self._live,
                terms,
                customer_id=customer_id,
                sources=sources,
                known=self._known_terms,
            )
        )

    def search(
        self,
        query: str,
        vector: Sequence[float],
        *,
        k: int = 5,
        customer_id: str | None = None,
        alpha: float = 0.5,
        sources: Sequence[str] | None = None,
    ) -> list[SearchHit]:
        """Hybrid search over policy chunks and, given a customer, their records (store/search)."""
        return self._resilient(
            lambda: _search.search(
                self._live,
                query,
                vector,
                k=k,
                customer_id=customer_id,
                alpha=alpha,
                sources=sources,
                recent=self._recent,
            )
        )
