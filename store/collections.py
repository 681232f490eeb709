"""Which physical collection each kind reads and writes, and handles scoped to one customer.

Handles carry a consistency level: reads (queries, fetches, counts) the configured read level,
writes the configured write level (QUORUM: a write holds once most copies have it, so it
survives the loss of one node of three).
"""

from __future__ import annotations

from collections.abc import Iterable

import weaviate
from weaviate.classes.config import ConsistencyLevel
from weaviate.classes.tenants import Tenant
from weaviate.collections import Collection

from freshkb.core import ids
from freshkb.core.errors import ConfigError
from freshkb.core.records import SourceKind
from freshkb.store.cluster import SINGLE_COPY, Replication, through_election
from freshkb.store.schema import ALIASES

_TENANTS_PER_REQUEST = 100


class LiveCollections:
    """The collections in use: the alias targets, unless a rebuild named another version."""

    def __init__(self, client: weaviate.WeaviateClient, replication: Replication = SINGLE_COPY):
        self.client = client
        self.replication = replication
        # Pinned per kind once known: a rebuild's target, or the alias target at schema time.
        self.physical: dict[SourceKind, str] = {}
        self.dimension: dict[SourceKind, int] = {}
        self._aliased: set[SourceKind] = set()  # kinds whose alias is known to exist

    def pin(self, kind: SourceKind, name: str, dimension: int | None = None) -> None:
        """Read and write `name` for `kind` from now on; its vectors have `dimension` numbers."""
        self.physical[kind] = name
        if dimension is not None:
            self.dimension[kind] = dimension

    def alias_target(self, kind: SourceKind) -> str | None:
        """The collection the alias of `kind` points at on the server, if any."""
        # A strongly consistent read, served by the Raft leader: it too waits out an election.
        alias = ALIASES[kind]
        if self.replication.factor <= 1:  # one node: no election to wait out; fail fast
            existing = self.client.alias.get(alias_name=alias)
        else:
            existing = through_election(
                lambda: self.client.alias.get(alias_name=alias), f"looking up alias {alias}"
            )
        return existing.collection if existing else None

    def live_collection(self, kind: SourceKind) -> str | None:
        """The physical collection `kind` reads and writes, if there is one."""
        if kind in self.physical:
            return self.physical[kind]
        return self.alias_target(kind)

    def reader(self, kind: SourceKind) -> Collection | None:
        """The collection to query `kind` in, None before the first ingest made one.

        Unless a version is pinned, queries go to the alias itself: Weaviate resolves it on
        each query (a switch takes effect at once), and a search saves looking it up first,
        a round trip of its own. Only whether the alias exists is remembered.
        """
        if kind in self.physical:
            return self._read(self.physical[kind])
        if kind not in self._aliased:
            if self.alias_target(kind) is None:
                return None
            self._aliased.add(kind)
        return self._read(ALIASES[kind])

    def forget_aliases(self) -> None:
        """Look the aliases up again on the next query (after a failed one: one may be gone)."""
        self._aliased.clear()

    def collection(self, kind: SourceKind, customer_id: str | None = None) -> Collection:
        """The collection of `kind` to read; for customers, only the shard of `customer_id`."""
        return self._scoped(kind, customer_id, self.replication.read)

    def writer(self, kind: SourceKind, customer_id: str | None = None) -> Collection:
        """The collection of `kind` to write, at the write consistency level."""
        return self._scoped(kind, customer_id, self.replication.write)

    def confirming(self, kind: SourceKind, customer_id: str | None = None) -> Collection:
        """The collection of `kind` at the read level that sees every acknowledged write."""
        return self._scoped(kind, customer_id, self.replication.confirming)

    def _scoped(
        self, kind: SourceKind, customer_id: str | None, level: ConsistencyLevel
    ) -> Collection:
        name = self.live_collection(kind)
        if name is None:
            raise ConfigError(f"no {ALIASES[kind]} collection yet: run `freshkb ingest` first")
        collection = self.client.collections.get(name).with_consistency_level(level)
        if kind is SourceKind.CUSTOMERS:
            if customer_id is None:
                raise ValueError("customer records are only reachable through a customer id")
            return collection.with_tenant(ids.tenant_name(customer_id))
        return collection

    def _read(self, name: str) -> Collection:
        """Collection `name` at the read consistency level."""
        return self.client.collections.get(name).with_consistency_level(self.replication.read)

    def shards(self, kind: SourceKind) -> list[Collection]:
        """Every shard of `kind` to scan: the collection, or each customer's tenant."""
        name = self.live_collection(kind)
        if name is None:
            return []
        if kind is SourceKind.DOCUMENTS:
            return [self.collection(kind)]
        base = self._read(name)
        return [base.with_tenant(tenant) for tenant in self.tenants(kind)]

    def tenants(self, kind: SourceKind) -> list[str]:
        """Tenant names of the customer collection in use (none for documents)."""
        name = self.live_collection(kind)
        if kind is not SourceKind.CUSTOMERS or name is None:
            return []
        return list(self.client.collections.get(name).tenants.get().keys())

    def has_customer(self, customer_id: str) -> bool:
        """True when the customer collection in use has a tenant for `customer_id`."""
        name = self.live_collection(SourceKind.CUSTOMERS)
        if name is None:
            return False
        return bool(self.client.collections.get(name).tenants.exists(ids.tenant_name(customer_id)))

    def ensure_tenants(self, customer_ids: Iterable[str]) -> None:
        """Create the tenants of these customers that do not exist yet."""
        name = self.live_collection(SourceKind.CUSTOMERS)
        if name is None:
            raise ConfigError("ensure_schema(CUSTOMERS) must run before tenants are created")
        wanted = {ids.tenant_name(c) for c in customer_ids}
        missing = sorted(wanted - set(self.tenants(SourceKind.CUSTOMERS)))
        collection = self.client.collections.get(name)
        for start in range(0, len(missing), _TENANTS_PER_REQUEST):
            part = missing[start : start + _TENANTS_PER_REQUEST]
            collection.tenants.create([Tenant(name=t) for t in part])

    def count_collection(self, name: str, kind: SourceKind) -> int:
        """Objects in collection `name`, over every tenant for customers."""
        collection = self.client.collections.get(name)
        if kind is SourceKind.DOCUMENTS:
            return int(collection.aggregate.over_all().total_count or 0)
        return sum(
            int(collection.with_tenant(t).aggregate.over_all().total_count or 0)
            for t in collection.tenants.get()
        )
