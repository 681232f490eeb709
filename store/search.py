"""Hybrid (BM25 + vector) search over policy chunks and one customer's records."""

from __future__ import annotations

import math
from collections.abc import Sequence

from weaviate.classes.query import Filter, MetadataQuery
from weaviate.collections import Collection
from weaviate.collections.classes.internal import Object
from weaviate.exceptions import WeaviateBaseError

from freshkb.core.errors import TransientError
from freshkb.core.records import SourceKind
from freshkb.store.collections import LiveCollections
from freshkb.store.protocol import SearchHit
from freshkb.store.state import opt_int, opt_str

_QUERY_PROPERTIES = ["text", "title^2", "section_title"]


def search(
    live: LiveCollections,
    query: str,
    vector: Sequence[float],
    *,
    k: int = 5,
    customer_id: str | None = None,
    alpha: float = 0.5,
    sources: Sequence[str] | None = None,
) -> list[SearchHit]:
    """Hybrid search over policy chunks and, given a customer, their records.

    Results of the two collections are merged by score: both use relative-score fusion,
    which scales each query's scores into [0, 1]. Because that score is relative, each hit
    also carries `relevance`, the cosine of its vector with the query's, an absolute measure
    the answer path uses to tell "nothing here answers this". With `sources`, only chunks of
    those sources are searched (the answer path passes the fresh ones).
    """
    if sources is not None and not sources:
        return []
    source_filter = Filter.by_property("source").contains_any(list(sources)) if sources else None
    hits: list[SearchHit] = []
    try:  # resolving the alias is a call too: Weaviate down fails here, as a TransientError
        for kind, collection in _targets(live, customer_id):
            response = collection.query.hybrid(
                query=query,
                vector=list(vector),
                alpha=alpha,
                limit=k,
                query_properties=_QUERY_PROPERTIES,
                filters=source_filter,
                return_metadata=MetadataQuery(score=True),
                include_vector=True,
            )
            hits += [_hit(obj, kind, vector) for obj in response.objects]
    except WeaviateBaseError as exc:
        raise TransientError(f"Weaviate search failed: {exc}") from exc
    hits.sort(key=lambda hit: hit.score, reverse=True)
    return hits[:k]


def _targets(live: LiveCollections, customer_id: str | None) -> list[tuple[SourceKind, Collection]]:
    """The policy collection, and the customer's own shard when there is one."""
    targets: list[tuple[SourceKind, Collection]] = []
    if live.live_collection(SourceKind.DOCUMENTS):
        targets.append((SourceKind.DOCUMENTS, live.collection(SourceKind.DOCUMENTS)))
    if customer_id is not None and live.has_customer(customer_id):
        targets.append((SourceKind.CUSTOMERS, live.collection(SourceKind.CUSTOMERS, customer_id)))
    return targets


def _hit(obj: Object, kind: SourceKind, query_vector: Sequence[float]) -> SearchHit:
    """One returned object as a hit."""
    p = obj.properties
    return SearchHit(
        uuid=str(obj.uuid),
        text=str(p.get("text", "")),
        source=str(p.get("source", "")),
        document_id=str(p.get("document_id", "")),
        document_key=str(p.get("document_key", "")),
        title=str(p.get("title", "")),
        section_title=opt_str(p.get("section_title")),
        page=opt_int(p.get("page")),
        score=float(obj.metadata.score or 0.0),
        kind=kind,
        customer_id=opt_str(p.get("customer_id")),
        ingested_at=p.get("ingested_at"),
        flow_run_id=opt_str(p.get("flow_run_id")),
        relevance=_cosine(query_vector, obj.vector.get("default") if obj.vector else None),
        injection_reason=str(p.get("injection_reason") or ""),
    )


def _cosine(query: Sequence[float], vector: object) -> float | None:
    """Cosine similarity of two vectors; None when the object came without a usable vector."""
    if not isinstance(vector, list) or len(vector) != len(query):
        return None
    dot = sum(a * b for a, b in zip(query, vector, strict=True))
    norm = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in vector))
    return round(dot / norm, 6) if norm else None
