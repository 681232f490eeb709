"""The two freshkb collections and their properties.

Each collection is reached through an alias (the alias is what answers are served from, so a
later rebuild can fill a new collection and switch the alias):

- PolicyChunk: chunks of every documents source, one shared collection so hybrid scores of
  all policies are comparable in one query.
- CustomerRecord: multi-tenant, one tenant per customer. Weaviate refuses a query on it that
  does not name a tenant, so a search for customer A cannot reach customer B's shard, whatever
  filter a caller forgets.

Vectors are supplied by freshkb (no vectorizer module). On a cluster each collection keeps
`weaviate_replication_factor` copies of every object, repaired in the background (async
replication) so a node that was down catches up on what it missed.
"""

from __future__ import annotations

from functools import partial

import weaviate
from weaviate.classes.config import (
    Configure,
    DataType,
    Property,
    ReplicationDeletionStrategy,
    Tokenization,
    VectorDistances,
)
from weaviate.exceptions import UnexpectedStatusCodeError

from freshkb.core.errors import ConfigError
from freshkb.core.records import SourceKind
from freshkb.store.cluster import SINGLE_COPY, Replication, check_replication, through_election

POLICY_ALIAS = "PolicyChunk"
CUSTOMER_ALIAS = "CustomerRecord"
ALIASES = {SourceKind.DOCUMENTS: POLICY_ALIAS, SourceKind.CUSTOMERS: CUSTOMER_ALIAS}


def create_collection(
    client: weaviate.WeaviateClient,
    name: str,
    kind: SourceKind,
    description: str,
    replication: Replication = SINGLE_COPY,
) -> None:
    """Create an empty collection of `kind`: self-provided cosine vectors, tenants if customers,
    `replication.factor` copies of each object; retried through a Raft leader election."""
    check_replication(client, replication.factor)

    def create() -> None:
        if client.collections.exists(name):  # a try cut off after the server created it
            return
        client.collections.create(
            name,
            description=description,
            properties=collection_properties(kind),
            vector_config=Configure.Vectors.self_provided(
                vector_index_config=Configure.VectorIndex.hnsw(
                    distance_metric=VectorDistances.COSINE
                )
            ),
            multi_tenancy_config=Configure.multi_tenancy(enabled=True)
            if kind is SourceKind.CUSTOMERS
            else None,
            replication_config=Configure.replication(
                factor=replication.factor,
                async_enabled=True,
                # A node that missed a delete must not bring the object back when it returns:
                # the later of the write and the delete wins.
                deletion_strategy=ReplicationDeletionStrategy.TIME_BASED_RESOLUTION,
            )
            if replication.factor > 1
            else None,
        )

    try:
        through_election(create, f"creating collection {name}")
    except UnexpectedStatusCodeError as exc:
        if "enough weaviate nodes" in str(exc):  # nodes lost between the check and the call
            check_replication(client, replication.factor)
            raise ConfigError(
                f"creating {name} with weaviate_replication_factor {replication.factor}: {exc}; "
                "lower FRESHKB_WEAVIATE_REPLICATION_FACTOR or start more Weaviate nodes"
            ) from exc
        raise


def add_missing_properties(client: weaviate.WeaviateClient, name: str, kind: SourceKind) -> None:
    """Add properties a newer freshkb defines to a collection created by an older one."""
    collection = client.collections.get(name)
    present = {prop.name for prop in collection.config.get().properties}
    for prop in collection_properties(kind):
        if prop.name not in present:
            add = partial(collection.config.add_property, prop)
            through_election(add, f"adding property {prop.name} to {name}")


def collection_properties(kind: SourceKind) -> list[Property]:
    """The schema of a collection.

    Only what is searched or filtered on is indexed: every index is a set of files per shard,
    and the customer collection has one shard per customer.
    """
    props = [
        _searchable("text"),
        _searchable("title"),
        _searchable("section_title"),
        _filterable("source"),
        _filterable("document_id"),
        _filterable("position", DataType.INT),
        _stored("document_key"),
        _stored("content_hash"),
        _stored("chunk_hash"),
        _stored("chunk_count", DataType.INT),
        _stored("page", DataType.INT),
        _stored("modified_at", DataType.DATE),
        _stored("ingested_at", DataType.DATE),
        _stored("flow_run_id"),
        _stored("model_id"),
        _stored("injection_reason"),
        _stored("document_names"),
        _stored("passage_vectors", DataType.BLOB),  # embeddings/passages.py, for re-ranking
    ]
    if kind is SourceKind.CUSTOMERS:
        props.append(_filterable("customer_id"))
    return props


def _searchable(name: str) -> Property:
    """A text property in the BM25 index, not filterable."""
    return Property(
        name=name,
        data_type=DataType.TEXT,
        tokenization=Tokenization.WORD,
        index_filterable=False,
    )


def _filterable(name: str, data_type: DataType = DataType.TEXT) -> Property:
    """A property filtered on by exact value, not searched."""
    return Property(
        name=name,
        data_type=data_type,
        tokenization=Tokenization.FIELD if data_type is DataType.TEXT else None,
        index_searchable=False,
        index_filterable=True,
    )


def _stored(name: str, data_type: DataType = DataType.TEXT) -> Property:
    """A property only returned with its object: no index at all."""
    return Property(
        name=name,
        data_type=data_type,
        tokenization=Tokenization.FIELD if data_type is DataType.TEXT else None,
        index_searchable=False,
        index_filterable=False,
        index_range_filters=False,
    )
