"""Hybrid (BM25 + vector) search over policy chunks and one customer's records."""

from __future__ import annotations

import math
from collections.abc import Sequence

from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.collections import Collection
from weaviate.collections.classes.internal import Object
from weaviate.exceptions import WeaviateBaseError

from freshkb.core.errors import TransientError
from freshkb.core.records import SourceKind
from freshkb.store.collections import LiveCollections
from freshkb.store.protocol import SearchHit
from freshkb.store.state import opt_int, opt_str

_QUERY_PROPERTIES = ["text", "title^2", "section_title"]
_FUSION = HybridFusion.RELATIVE_SCORE
# Candidates fetched per hit returned: a page split into several chunks fills the top k with
# near-copies of itself, so more are fetched and only each page's best chunk is kept (pages
# are what citations name). 4 gave page hit@5 +2.9 points on both halves of the dev cases.
CANDIDATES_PER_HIT = 4
# What a hit carries, and nothing else: four times the objects come back, so the hashes,
# counts and dates no hit uses are left in Weaviate.
_RETURNED = (
    "text",
    "title",
    "section_title",
    "source",
    "document_id",
    "document_key",
    "page",
    "ingested_at",
    "flow_run_id",
    "injection_reason",
)

Candidate = tuple[Object, SourceKind]


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
    """Hybrid search over policy chunks and, given a customer, their records: the best chunk of
    each page, the k best pages.

    Results of the two collections are merged by score: both use relative-score fusion,
    which scales each query's scores into [0, 1]. Because that score is relative, each hit
    also carries `relevance`, the cosine of its vector with the query's, an absolute measure
    the answer path uses to tell "nothing here answers this". With `sources`, only chunks of
    those sources are searched (the answer path passes the fresh ones).
    """
    if sources is not None and not sources:
        return []
    source_filter = Filter.by_property("source").contains_any(list(sources)) if sources else None
    found: list[Candidate] = []
    try:  # resolving the alias is a call too: Weaviate down fails here, as a TransientError
        targets = _targets(live, customer_id)
        for kind, collection in targets:
            response = collection.query.hybrid(
                query=query,
                vector=list(vector),
                alpha=alpha,
                limit=k * CANDIDATES_PER_HIT,
                query_properties=_QUERY_PROPERTIES,
                fusion_type=_FUSION,
                filters=source_filter,
                return_metadata=MetadataQuery(score=True),
                return_properties=_returned(kind),
            )
            found += [(obj, kind) for obj in response.objects]
        found.sort(key=lambda candidate: _score(candidate[0]), reverse=True)
        kept = best_per_page(found)[:k]
        # Vectors only for the hits kept: most of a query's cost is reading vectors.
        vectors = _vectors(dict(targets), kept)
    except WeaviateBaseError as exc:
        live.forget_aliases()  # an alias removed since it was seen: look it up next time
        raise TransientError(f"Weaviate search failed: {exc}") from exc
    return [_hit(obj, kind, vector, vectors.get(str(obj.uuid))) for obj, kind in kept]


def _vectors(
    collections: dict[SourceKind, Collection], kept: Sequence[Candidate]
) -> dict[str, object]:
    """The stored vector of each kept object, by UUID: one fetch per collection."""
    vectors: dict[str, object] = {}
    for kind, collection in collections.items():
        ids = [obj.uuid for obj, of in kept if of is kind]
        if not ids:
            continue
        response = collection.query.fetch_objects(
            filters=Filter.by_id().contains_any(ids),
            limit=len(ids),
            include_vector=True,
            return_properties=[],
        )
        vectors |= {
            str(o.uuid): o.vector.get("default") if o.vector else None for o in response.objects
        }
    return vectors


def best_per_page(found: Sequence[Candidate]) -> list[Candidate]:
    """The first (best-ranked) candidate of each (document, page); chunks without a page, such
    as Markdown sections and customer records, each stand for themselves."""
    seen: set[tuple[str, int] | str] = set()
    kept: list[Candidate] = []
    for obj, kind in found:
        page = opt_int(obj.properties.get("page"))
        document = str(obj.properties.get("document_id", ""))
        key = (document, page) if page is not None else str(obj.uuid)
        if key not in seen:
            seen.add(key)
            kept.append((obj, kind))
    return kept


def _targets(live: LiveCollections, customer_id: str | None) -> list[tuple[SourceKind, Collection]]:
    """The policy collection, and the customer's own shard when there is one."""
    targets: list[tuple[SourceKind, Collection]] = []
    documents = live.reader(SourceKind.DOCUMENTS)
    if documents is not None:
        targets.append((SourceKind.DOCUMENTS, documents))
    if customer_id is not None and live.has_customer(customer_id):
        targets.append((SourceKind.CUSTOMERS, live.collection(SourceKind.CUSTOMERS, customer_id)))
    return targets


def _returned(kind: SourceKind) -> list[str] | None:
    """The properties a hit of `kind` needs (a customer's records also name the customer)."""
    extra = ["customer_id"] if kind is SourceKind.CUSTOMERS else []
    return [*_RETURNED, *extra]


def _score(obj: Object) -> float:
    return float(obj.metadata.score or 0.0)


def _hit(obj: Object, kind: SourceKind, query_vector: Sequence[float], vector: object) -> SearchHit:
    """One returned object as a hit, its relevance from its stored vector."""
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
        score=_score(obj),
        kind=kind,
        customer_id=opt_str(p.get("customer_id")),
        ingested_at=p.get("ingested_at"),
        flow_run_id=opt_str(p.get("flow_run_id")),
        relevance=_cosine(query_vector, vector),
        injection_reason=str(p.get("injection_reason") or ""),
    )


def _cosine(query: Sequence[float], vector: object) -> float | None:
    """Cosine similarity of two vectors; None when the object came without a usable vector."""
    if not isinstance(vector, list) or len(vector) != len(query):
        return None
    dot = sum(a * b for a, b in zip(query, vector, strict=True))
    norm = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in vector))
    return round(dot / norm, 6) if norm else None
