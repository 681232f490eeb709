"""The two freshkb collections and their properties.

Each collection is reached through an alias (the alias is what answers are served from, so a
later rebuild can fill a new collection and switch the alias):

- PolicyChunk: chunks of every documents source, one shared collection so hybrid scores of
  all policies are comparable in one query.
- CustomerRecord: multi-tenant, one tenant per customer. Weaviate refuses a query on it that
  does not name a tenant, so a search for customer A cannot reach customer B's shard, whatever
  filter a caller forgets.

Vectors are supplied by freshkb (no vectorizer module).
"""

from __future__ import annotations

import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

from freshkb.core.records import SourceKind

POLICY_ALIAS = "PolicyChunk"
CUSTOMER_ALIAS = "CustomerRecord"
ALIASES = {SourceKind.DOCUMENTS: POLICY_ALIAS, SourceKind.CUSTOMERS: CUSTOMER_ALIAS}


def create_collection(
    client: weaviate.WeaviateClient, name: str, kind: SourceKind, description: str
) -> None:
    """Create an empty collection of `kind`: self-provided cosine vectors, tenants if customers."""
    client.collections.create(
        name,
        description=description,
        properties=collection_properties(kind),
        vector_config=Configure.Vectors.self_provided(
            vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
        ),
        multi_tenancy_config=Configure.multi_tenancy(enabled=True)
        if kind is SourceKind.CUSTOMERS
        else None,
    )


def add_missing_properties(client: weaviate.WeaviateClient, name: str, kind: SourceKind) -> None:
    """Add properties a newer freshkb defines to a collection created by an older one."""
    collection = client.collections.get(name)
    present = {prop.name for prop in collection.config.get().properties}
    for prop in collection_properties(kind):
        if prop.name not in present:
            collection.config.add_property(prop)


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
