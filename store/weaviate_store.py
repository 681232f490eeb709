"""Policy chunks and customer records in Weaviate, written idempotently.

Two collections, each reached through an alias (the alias is what answers are served from, so
a later rebuild can fill a new collection and switch the alias):

- PolicyChunk: chunks of every documents source, one shared collection so hybrid scores of
  all policies are comparable in one query.
- CustomerRecord: multi-tenant, one tenant per customer. Weaviate refuses a query on it that
  does not name a tenant, so a search for customer A cannot reach customer B's shard, whatever
  filter a caller forgets.

Vectors are supplied by freshkb (no vectorizer module). Object UUIDs are uuid5(document id,
position), so writing a chunk again overwrites it instead of duplicating it.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.classes.tenants import Tenant
from weaviate.collections import Collection
from weaviate.exceptions import WeaviateBaseError, WeaviateConnectionError

from freshkb.core import ids
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.records import EmbeddedChunk, SourceKind, StoredDocument

log = logging.getLogger(__name__)

POLICY_ALIAS = "PolicyChunk"
CUSTOMER_ALIAS = "CustomerRecord"
ALIASES = {SourceKind.DOCUMENTS: POLICY_ALIAS, SourceKind.CUSTOMERS: CUSTOMER_ALIAS}
WRITE_BATCH = 200
_DESCRIPTION_FIELD = re.compile(r"(?P<name>[a-z_]+)=(?P<value>[^\s;]+)")
_VERSION_NAME = re.compile(r"^(?P<alias>[A-Za-z]+)_v(?P<number>\d+)$")


def connect(settings: Settings) -> weaviate.WeaviateClient:
    """A connected client: WEAVIATE_URL (with its API key) if set, else the managed local server."""
    from freshkb.store.server import local_url

    key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
    auth = weaviate.auth.Auth.api_key(key) if key else None
    try:
        if settings.weaviate_url is None:
            return weaviate.connect_to_local(
                host="127.0.0.1",
                port=settings.weaviate_http_port,
                grpc_port=settings.weaviate_grpc_port,
            )
        url = settings.weaviate_url.rstrip("/")
        if url.endswith((".weaviate.cloud", ".weaviate.network")):
            if auth is None:
                raise ConfigError(f"{url} is a Weaviate Cloud cluster: set WEAVIATE_API_KEY")
            return weaviate.connect_to_weaviate_cloud(cluster_url=url, auth_credentials=auth)
        http = httpx_url(url)
        grpc = httpx_url(settings.weaviate_grpc_url) if settings.weaviate_grpc_url else None
        return weaviate.connect_to_custom(
            http_host=http.host,
            http_port=http.port,
            http_secure=http.secure,
            grpc_host=grpc.host if grpc else http.host,
            grpc_port=grpc.port if grpc else 50051,
            grpc_secure=grpc.secure if grpc else http.secure,
            auth_credentials=auth,
        )
    except WeaviateConnectionError as exc:
        where = settings.weaviate_url or local_url(settings)
        fix = (
            "check WEAVIATE_URL and the API key"
            if settings.weaviate_url
            else "start it with `freshkb weaviate up`"
        )
        raise TransientError(f"cannot reach Weaviate at {where}: {exc}; {fix}") from exc


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    secure: bool


def httpx_url(url: str) -> _Endpoint:
    """Host, port and TLS flag of a URL, with the scheme's default port."""
    import httpx

    parsed = httpx.URL(url)
    secure = parsed.scheme == "https"
    return _Endpoint(parsed.host, parsed.port or (443 if secure else 80), secure)


def _properties(kind: SourceKind) -> list[Property]:
    """The schema of a collection.

    Only what is searched or filtered on is indexed: every index is a set of files per shard,
    and the customer collection has one shard per customer.
    """
    field = Tokenization.FIELD

    def searchable(name: str) -> Property:
        return Property(
            name=name,
            data_type=DataType.TEXT,
            tokenization=Tokenization.WORD,
            index_filterable=False,
        )

    def filterable(name: str, data_type: DataType = DataType.TEXT) -> Property:
        tokenization = field if data_type is DataType.TEXT else None
        return Property(
            name=name,
            data_type=data_type,
            tokenization=tokenization,
            index_searchable=False,
            index_filterable=True,
        )

    def stored(name: str, data_type: DataType = DataType.TEXT) -> Property:
        tokenization = field if data_type is DataType.TEXT else None
        return Property(
            name=name,
            data_type=data_type,
            tokenization=tokenization,
            index_searchable=False,
            index_filterable=False,
            index_range_filters=False,
        )

    props = [
        searchable("text"),
        searchable("title"),
        searchable("section_title"),
        filterable("source"),
        filterable("document_id"),
        filterable("position", DataType.INT),
        stored("document_key"),
        stored("content_hash"),
        stored("chunk_hash"),
        stored("chunk_count", DataType.INT),
        stored("page", DataType.INT),
        stored("modified_at", DataType.DATE),
        stored("ingested_at", DataType.DATE),
        stored("flow_run_id"),
        stored("model_id"),
        stored("injection_reason"),
    ]
    if kind is SourceKind.CUSTOMERS:
        props.append(filterable("customer_id"))
    return props


@dataclass(frozen=True)
class WriteResult:
    """Objects written and every object that failed, with Weaviate's message."""

    written: int
    failed: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IndexVersion:
    """One physical collection behind an alias: what built it and whether it served."""

    name: str
    kind: SourceKind
    number: int
    model_id: str | None
    dimension: int | None
    created_at: str | None
    flow_run_id: str | None
    promoted_at: str | None  # first time the alias pointed at it: it was complete
    retired_at: str | None  # last time the alias moved away from it
    rolled_back_at: str | None  # rolled back from: never a rollback target again
    failed_at: str | None  # a rebuild that did not complete; dropped by the next rebuild
    live: bool
    objects: int

    @property
    def complete(self) -> bool:
        """True if this version was ever promoted (filled and checked completely)."""
        return self.promoted_at is not None


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk or record, with where it came from."""

    uuid: str
    text: str
    source: str
    document_id: str
    document_key: str
    title: str
    section_title: str | None
    page: int | None
    score: float
    kind: SourceKind
    customer_id: str | None
    ingested_at: datetime | None
    flow_run_id: str | None
    relevance: float | None = None  # cosine of the hit's vector with the query's
    injection_reason: str = ""  # set at ingestion when the chunk reads as instructions to an AI


class WeaviateStore:
    """The freshkb collections of one Weaviate server."""

    def __init__(self, client: weaviate.WeaviateClient):
        self.client = client
        self._physical: dict[SourceKind, str] = {}
        self._dimension: dict[SourceKind, int] = {}

    # -- schema ---------------------------------------------------------------------------

    def ensure_schema(
        self, kind: SourceKind, model_id: str, dimension: int, flow_run_id: str = "local"
    ) -> str:
        """The live collection of `kind`, created (as version 1) if there is none yet.

        Refuses a live collection built with another embedding model: vectors of two models are
        never mixed; `freshkb rebuild` builds a new version instead.
        """
        alias = ALIASES[kind]
        try:
            existing = self.client.alias.get(alias_name=alias)
            if existing is None:
                name = self.create_version(kind, model_id, dimension, flow_run_id)
                self.promote(kind, name)
            else:
                name = existing.collection
        except WeaviateBaseError as exc:
            raise TransientError(f"Weaviate schema set-up for {alias} failed: {exc}") from exc
        stored_model, stored_dim = self.collection_model(name)
        if stored_model and (stored_model != model_id or stored_dim != dimension):
            raise ConfigError(
                f"the live {alias} collection ({name}) holds vectors of model {stored_model} "
                f"({stored_dim} dims) but the configured embedding model is {model_id} "
                f"({dimension} dims); vectors of two models are never mixed: run `freshkb "
                f"rebuild --kind {kind.value}` to build a new version with the configured model "
                "(the alias switches to it only when it is complete), or set the model back"
            )
        self._add_missing_properties(name, kind)
        self._physical[kind] = name
        self._dimension[kind] = dimension
        return name

    def _add_missing_properties(self, name: str, kind: SourceKind) -> None:
        """Add properties a newer freshkb defines to a collection created by an older one."""
        collection = self.client.collections.get(name)
        present = {prop.name for prop in collection.config.get().properties}
        for prop in _properties(kind):
            if prop.name not in present:
                collection.config.add_property(prop)

    def use_collection(self, kind: SourceKind, name: str) -> None:
        """Write to and read from `name` instead of the alias target (a rebuild in progress)."""
        _, dimension = self.collection_model(name)
        self._physical[kind] = name
        if dimension is not None:
            self._dimension[kind] = dimension

    def collection_info(self, name: str) -> dict[str, str]:
        """The key=value fields freshkb keeps in a collection's description."""
        config = self.client.collections.get(name).config.get()
        return {
            m["name"]: m["value"] for m in _DESCRIPTION_FIELD.finditer(config.description or "")
        }

    def collection_model(self, name: str) -> tuple[str | None, int | None]:
        """The (model id, dimension) a collection was created for, from its description."""
        info = self.collection_info(name)
        if "model" not in info:
            return None, None
        return info["model"], int(info["dim"]) if "dim" in info else None

    def _describe(self, name: str, **fields: str) -> None:
        info = self.collection_info(name) | fields
        kind = "customers" if name.startswith(CUSTOMER_ALIAS) else "documents"
        text = f"freshkb {kind}; " + " ".join(f"{key}={value}" for key, value in info.items())
        self.client.collections.get(name).config.update(description=text)

    # -- versions -------------------------------------------------------------------------

    def create_version(
        self, kind: SourceKind, model_id: str, dimension: int, flow_run_id: str
    ) -> str:
        """Create the next, empty version of `kind`'s collection (not yet live); its name."""
        alias = ALIASES[kind]
        taken = [v.number for v in self.versions(kind, count_objects=False)]
        name = f"{alias}_v{max(taken, default=0) + 1}"
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.client.collections.create(
            name,
            description=(
                f"freshkb {kind.value}; model={model_id} dim={dimension} created={created} "
                f"flow_run={flow_run_id}"
            ),
            properties=_properties(kind),
            vector_config=Configure.Vectors.self_provided(
                vector_index_config=Configure.VectorIndex.hnsw(
                    distance_metric=VectorDistances.COSINE
                )
            ),
            multi_tenancy_config=Configure.multi_tenancy(enabled=True)
            if kind is SourceKind.CUSTOMERS
            else None,
        )
        return name

    def promote(self, kind: SourceKind, name: str) -> str | None:
        """Point `kind`'s alias at `name` (answers switch at once); returns the previous target."""
        alias = ALIASES[kind]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        existing = self.client.alias.get(alias_name=alias)
        previous = existing.collection if existing else None
        if previous == name:
            return previous
        if previous is None:
            self.client.alias.create(alias_name=alias, target_collection=name)
        else:
            self.client.alias.update(alias_name=alias, new_target_collection=name)
            self._describe(previous, retired=now)
        if "promoted" not in self.collection_info(name):
            self._describe(name, promoted=now)
        self._physical[kind] = name
        return previous

    def rollback(self, kind: SourceKind) -> tuple[str, IndexVersion]:
        """Point the alias back at the most recently promoted earlier version.

        The version rolled back from is marked and never chosen by a later rollback, so two
        rollbacks in a row go two versions back rather than toggling. Returns (from, to).
        """
        versions = self.versions(kind, count_objects=False)
        live = next((v for v in versions if v.live), None)
        if live is None:
            raise ConfigError(f"no live {ALIASES[kind]} collection: nothing to roll back")
        candidates = [v for v in versions if not v.live and v.complete and v.rolled_back_at is None]
        if not candidates:
            raise ConfigError(
                f"{live.name} is the only complete {ALIASES[kind]} version: there is no "
                "previous version to roll back to"
            )
        target = max(candidates, key=lambda v: (v.promoted_at or "", v.number))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.promote(kind, target.name)
        self._describe(live.name, rolled_back=now)
        return live.name, target

    def versions(
        self, kind: SourceKind | None = None, count_objects: bool = True
    ) -> list[IndexVersion]:
        """Every freshkb collection version (of one kind, or all), oldest first."""
        kinds = [kind] if kind else list(ALIASES)
        live = {}
        for each in kinds:
            existing = self.client.alias.get(alias_name=ALIASES[each])
            live[each] = existing.collection if existing else None
        found = []
        for name in self.client.collections.list_all(simple=True):
            match = _VERSION_NAME.match(name)
            if not match:
                continue
            version_kind = next((k for k in kinds if ALIASES[k] == match["alias"]), None)
            if version_kind is None:
                continue
            info = self.collection_info(name)
            found.append(
                IndexVersion(
                    name=name,
                    kind=version_kind,
                    number=int(match["number"]),
                    model_id=info.get("model"),
                    dimension=int(info["dim"]) if "dim" in info else None,
                    created_at=info.get("created"),
                    flow_run_id=info.get("flow_run"),
                    promoted_at=info.get("promoted"),
                    retired_at=info.get("retired"),
                    rolled_back_at=info.get("rolled_back"),
                    failed_at=info.get("failed"),
                    live=live[version_kind] == name,
                    objects=self._count_collection(name, version_kind) if count_objects else 0,
                )
            )
        return sorted(found, key=lambda v: (v.kind.value, v.number))

    def mark_failed(self, name: str) -> None:
        """Mark a version whose rebuild did not complete; it is never promoted."""
        self._describe(name, failed=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def drop_failed_versions(self, kind: SourceKind) -> list[str]:
        """Delete the versions of `kind` left by failed rebuilds; their names."""
        failed = [v.name for v in self.versions(kind, count_objects=False) if v.failed_at]
        for name in failed:
            self.drop_version(name)
        return failed

    def drop_version(self, name: str) -> None:
        """Delete a version that is not live (an incomplete rebuild, or an old one)."""
        for alias in ALIASES.values():
            existing = self.client.alias.get(alias_name=alias)
            if existing and existing.collection == name:
                raise ConfigError(f"{name} is live behind {alias}; roll back or rebuild first")
        self.client.collections.delete(name)

    def _count_collection(self, name: str, kind: SourceKind) -> int:
        collection = self.client.collections.get(name)
        if kind is SourceKind.DOCUMENTS:
            return int(collection.aggregate.over_all().total_count or 0)
        return sum(
            int(collection.with_tenant(t).aggregate.over_all().total_count or 0)
            for t in collection.tenants.get()
        )

    def live_collection(self, kind: SourceKind) -> str | None:
        """The physical collection the alias of `kind` points at, if there is one."""
        if kind in self._physical:
            return self._physical[kind]
        existing = self.client.alias.get(alias_name=ALIASES[kind])
        return existing.collection if existing else None

    def _collection(self, kind: SourceKind, customer_id: str | None = None) -> Collection:
        name = self.live_collection(kind)
        if name is None:
            raise ConfigError(f"no {ALIASES[kind]} collection yet: run `freshkb ingest` first")
        collection = self.client.collections.get(name)
        if kind is SourceKind.CUSTOMERS:
            if customer_id is None:
                raise ValueError("customer records are only reachable through a customer id")
            return collection.with_tenant(ids.tenant_name(customer_id))
        return collection

    def _tenants(self, kind: SourceKind) -> list[str]:
        name = self.live_collection(kind)
        if kind is not SourceKind.CUSTOMERS or name is None:
            return []
        return list(self.client.collections.get(name).tenants.get().keys())

    def ensure_tenants(self, customer_ids: Iterable[str]) -> None:
        """Create the tenants of these customers that do not exist yet."""
        name = self.live_collection(SourceKind.CUSTOMERS)
        if name is None:
            raise ConfigError("ensure_schema(CUSTOMERS) must run before tenants are created")
        wanted = {ids.tenant_name(c) for c in customer_ids}
        missing = sorted(wanted - set(self._tenants(SourceKind.CUSTOMERS)))
        collection = self.client.collections.get(name)
        for start in range(0, len(missing), 100):
            collection.tenants.create([Tenant(name=t) for t in missing[start : start + 100]])

    # -- state ----------------------------------------------------------------------------

    def stored_documents(self, source: str, kind: SourceKind) -> dict[str, StoredDocument]:
        """Per document of `source`: its content hash, expected and present chunk counts."""
        if self.live_collection(kind) is None:
            return {}
        collections = (
            [self._collection(kind)]
            if kind is SourceKind.DOCUMENTS
            else [
                self.client.collections.get(self.live_collection(kind) or "").with_tenant(t)
                for t in self._tenants(kind)
            ]
        )
        props = ["source", "document_id", "content_hash", "chunk_count", "position"]
        if kind is SourceKind.CUSTOMERS:
            props.append("customer_id")
        seen: dict[str, dict[str, Any]] = {}
        for collection in collections:
            for obj in collection.iterator(return_properties=props):
                p = obj.properties
                if p.get("source") != source:
                    continue
                doc = seen.setdefault(
                    str(p["document_id"]),
                    {
                        "hashes": set(),
                        "count": _opt_int(p.get("chunk_count")) or 0,
                        "positions": set(),
                        "customer_id": p.get("customer_id"),
                    },
                )
                doc["hashes"].add(p["content_hash"])
                doc["positions"].add(_opt_int(p.get("position")) or 0)
        result = {}
        for doc_id, doc in seen.items():
            # Mixed hashes mean a write was interrupted between two versions: treat as changed.
            stored_hash = next(iter(doc["hashes"])) if len(doc["hashes"]) == 1 else ""
            complete = doc["positions"] == set(range(doc["count"]))
            result[doc_id] = StoredDocument(
                document_id=doc_id,
                content_hash=stored_hash,
                chunk_count=doc["count"],
                complete=complete,
                customer_id=doc["customer_id"],
            )
        return result

    def count(self, kind: SourceKind, source: str | None = None) -> int:
        """Objects of a kind (optionally of one source) in the live collection."""
        if self.live_collection(kind) is None:
            return 0
        if kind is SourceKind.DOCUMENTS:
            flt = Filter.by_property("source").equal(source) if source else None
            return int(self._collection(kind).aggregate.over_all(filters=flt).total_count or 0)
        base = self.client.collections.get(self.live_collection(kind) or "")
        total = 0
        for tenant in self._tenants(kind):
            flt = Filter.by_property("source").equal(source) if source else None
            total += int(base.with_tenant(tenant).aggregate.over_all(filters=flt).total_count or 0)
        return total

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
        groups: dict[tuple[SourceKind, str | None], list[EmbeddedChunk]] = defaultdict(list)
        for item in embedded:
            groups[(item.chunk.kind, item.chunk.customer_id)].append(item)
        customers = {cid for (kind, cid) in groups if kind is SourceKind.CUSTOMERS and cid}
        if customers:
            self.ensure_tenants(customers)
        written = done = 0
        failed: list[tuple[str, str]] = []
        for (kind, customer_id), group in groups.items():
            collection = self._collection(kind, customer_id)
            # Weaviate fixes a collection's dimension from its first vector and would reject or,
            # worse, race on others; check here so each bad object is reported by name.
            expected = self._dimension.get(kind)
            items = []
            for item in group:
                if expected is not None and len(item.vector) != expected:
                    failed.append(
                        (
                            item.chunk.uuid,
                            f"vector has {len(item.vector)} dimensions, "
                            f"the collection holds {expected}",
                        )
                    )
                else:
                    items.append(item)
            for start in range(0, len(items), WRITE_BATCH):
                batch = items[start : start + WRITE_BATCH]
                objects = [
                    DataObject(
                        properties=_object_properties(item, ingested_at, flow_run_id, model_id),
                        uuid=item.chunk.uuid,
                        vector=list(item.vector),
                    )
                    for item in batch
                ]
                try:
                    result = collection.data.insert_many(objects)
                except WeaviateBaseError as exc:
                    raise TransientError(f"Weaviate batch write failed: {exc}") from exc
                for index, error in result.errors.items():
                    failed.append((batch[index].chunk.uuid, error.message))
                written += len(batch) - len(result.errors)
                done += len(batch)
                if progress:
                    progress(done, len(embedded))
        return WriteResult(written=written, failed=tuple(failed))

    def delete_documents(self, kind: SourceKind, documents: Iterable[StoredDocument]) -> int:
        """Delete every chunk of these documents; returns objects deleted."""
        by_tenant: dict[str | None, list[str]] = defaultdict(list)
        for doc in documents:
            by_tenant[doc.customer_id if kind is SourceKind.CUSTOMERS else None].append(
                doc.document_id
            )
        deleted = 0
        for customer_id, doc_ids in by_tenant.items():
            collection = self._collection(kind, customer_id)
            for start in range(0, len(doc_ids), 500):
                part = doc_ids[start : start + 500]
                result = collection.data.delete_many(
                    where=Filter.by_property("document_id").contains_any(part)
                )
                deleted += int(result.successful)
        return deleted

    def delete_positions_from(
        self, kind: SourceKind, document_id: str, first_gone: int, customer_id: str | None
    ) -> int:
        """Delete a document's chunks at positions >= first_gone (it got shorter)."""
        collection = self._collection(kind, customer_id)
        result = collection.data.delete_many(
            where=Filter.by_property("document_id").equal(document_id)
            & Filter.by_property("position").greater_or_equal(first_gone)
        )
        return int(result.successful)

    # -- reads ----------------------------------------------------------------------------

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
        """Hybrid (BM25 + vector) search over policy chunks and, given a customer, their records.

        Results of the two collections are merged by score: both use relative-score fusion,
        which scales each query's scores into [0, 1]. Because that score is relative, each hit
        also carries `relevance`, the cosine of its vector with the query's, an absolute measure
        the answer path uses to tell "nothing here answers this". With `sources`, only chunks of
        those sources are searched (the answer path passes the fresh ones).
        """
        if sources is not None and not sources:
            return []
        source_filter = (
            Filter.by_property("source").contains_any(list(sources)) if sources else None
        )
        targets: list[tuple[SourceKind, Collection]] = []
        if self.live_collection(SourceKind.DOCUMENTS):
            targets.append((SourceKind.DOCUMENTS, self._collection(SourceKind.DOCUMENTS)))
        if customer_id is not None and self.live_collection(SourceKind.CUSTOMERS):
            name = self.live_collection(SourceKind.CUSTOMERS) or ""
            if self.client.collections.get(name).tenants.exists(ids.tenant_name(customer_id)):
                targets.append(
                    (SourceKind.CUSTOMERS, self._collection(SourceKind.CUSTOMERS, customer_id))
                )
        hits: list[SearchHit] = []
        for kind, collection in targets:
            try:
                response = collection.query.hybrid(
                    query=query,
                    vector=list(vector),
                    alpha=alpha,
                    limit=k,
                    query_properties=["text", "title^2", "section_title"],
                    filters=source_filter,
                    return_metadata=MetadataQuery(score=True),
                    include_vector=True,
                )
            except WeaviateBaseError as exc:
                raise TransientError(f"Weaviate search failed: {exc}") from exc
            for obj in response.objects:
                p = obj.properties
                hits.append(
                    SearchHit(
                        uuid=str(obj.uuid),
                        text=str(p.get("text", "")),
                        source=str(p.get("source", "")),
                        document_id=str(p.get("document_id", "")),
                        document_key=str(p.get("document_key", "")),
                        title=str(p.get("title", "")),
                        section_title=_opt_str(p.get("section_title")),
                        page=_opt_int(p.get("page")),
                        score=float(obj.metadata.score or 0.0),
                        kind=kind,
                        customer_id=_opt_str(p.get("customer_id")),
                        ingested_at=p.get("ingested_at"),  # type: ignore[arg-type]
                        flow_run_id=_opt_str(p.get("flow_run_id")),
                        relevance=_cosine(
                            vector, obj.vector.get("default") if obj.vector else None
                        ),
                        injection_reason=str(p.get("injection_reason") or ""),
                    )
                )
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits[:k]


def _cosine(query: Sequence[float], vector: object) -> float | None:
    if not isinstance(vector, list) or len(vector) != len(query):
        return None
    dot = sum(a * b for a, b in zip(query, vector, strict=True))
    norm = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in vector))
    return round(dot / norm, 6) if norm else None


def _opt_str(value: object) -> str | None:
    return None if value in (None, "") else str(value)


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _object_properties(
    item: EmbeddedChunk, ingested_at: datetime, flow_run_id: str, model_id: str
) -> dict[str, Any]:
    chunk = item.chunk
    props: dict[str, Any] = {
        "text": chunk.text,
        "title": chunk.title,
        "section_title": chunk.section_title or "",
        "source": chunk.source,
        "document_id": chunk.document_id,
        "document_key": chunk.key,
        "content_hash": chunk.content_hash,
        "chunk_hash": chunk.chunk_hash,
        "position": chunk.position,
        "chunk_count": chunk.chunk_count,
        "page": chunk.page,
        "modified_at": chunk.modified_at,
        "ingested_at": ingested_at,
        "flow_run_id": flow_run_id,
        "model_id": model_id,
        "injection_reason": chunk.injection_reason,
    }
    if chunk.kind is SourceKind.CUSTOMERS:
        props["customer_id"] = chunk.customer_id
    return props
