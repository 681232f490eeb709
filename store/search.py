"""Hybrid (BM25 + vector) search over policy chunks and one customer's records."""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from weaviate.classes.query import BM25Operator, Filter, HybridFusion, MetadataQuery
from weaviate.collections import Collection
from weaviate.collections.classes.filters import FilterReturn
from weaviate.collections.classes.internal import Object
from weaviate.exceptions import WeaviateBaseError

from freshkb.core import document_names
from freshkb.core.errors import TransientError
from freshkb.core.records import SourceKind
from freshkb.embeddings.passages import best_similarity, decode_rows
from freshkb.store.collections import LiveCollections
from freshkb.store.protocol import SearchHit
from freshkb.store.recent import RecentNames, RecentReads, RecentVectors
from freshkb.store.state import opt_int, opt_str

_QUERY_PROPERTIES = ["text", "title^2", "section_title"]
_FUSION = HybridFusion.RELATIVE_SCORE
# Candidates fetched per hit returned: a page split into several chunks fills the top k with
# near-copies of itself, so more are fetched and only each page's best chunk is kept (pages
# are what citations name). 4 gave page hit@5 +2.9 points on both halves of the dev cases.
CANDIDATES_PER_HIT = 4
# What a hit carries, and the key of its vector (RecentVectors): four times the objects come
# back, so the counts and dates no hit uses are left in Weaviate.
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
    "chunk_hash",  # with model_id, the key of the chunk's vector in RecentVectors
    "model_id",
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
    recent: RecentReads | None = None,
) -> list[SearchHit]:
    """Hybrid search over policy chunks and, given a customer, their records: the best chunk of
    each page, the k best pages.

    Results of the two collections are merged by score: both use relative-score fusion,
    which scales each query's scores into [0, 1]. Because that score is relative, each hit
    also carries `relevance`, the cosine of its vector with the query's, an absolute measure
    the answer path uses to tell "nothing here answers this". With `sources`, only chunks of
    those sources are searched (the answer path passes the fresh ones). A page whose document
    uses a name of the question far less than another candidate's does goes after the others
    (`named_first`). Before that, pages are ordered by their fused score plus the best cosine of
    one of their passages with the question (`by_passages`). Documents' names and chunks'
    vectors read before come from `recent` (store/recent.py) instead of Weaviate.
    """
    if sources is not None and not sources:
        return []
    source_filter = _source_filter(sources)
    recent = recent or RecentReads(RecentNames(), RecentVectors(size=0), RecentVectors(size=0))
    found: list[Candidate] = []
    # resolving the alias is a call too: Weaviate down fails there, as a TransientError
    with _transient(live, "search"):
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
        pages = best_per_page(found)
        rows = _passage_rows(dict(targets), pages, len(vector), recent.passages)
        pages = by_passages(vector, pages, rows)
        kept = named_first(query, pages, dict(targets), recent.names)[:k]
        # Vectors only for the hits kept: most of a query's cost is reading vectors.
        vectors = _vectors(dict(targets), kept, recent.vectors)
    return [_hit(obj, kind, vector, vectors.get(str(obj.uuid))) for obj, kind in kept]


class KnownTerms:
    """Terms recently found in the policy chunks of a set of sources, for `ttl` seconds: most
    questions name the same few things, each lookup is a query. Only what the shared policy
    chunks hold is kept, never what one customer's records hold. A term removed from every
    document is still taken as known for at most `ttl` seconds."""

    def __init__(self, ttl: float = 60.0, size: int = 4096):
        self.ttl, self.size = ttl, size
        self._until: dict[tuple[str, tuple[str, ...] | None], float] = {}

    def __contains__(self, key: tuple[str, Sequence[str] | None]) -> bool:
        return self._until.get(self._key(*key), 0.0) > time.monotonic()

    def add(self, term: str, sources: Sequence[str] | None) -> None:
        if len(self._until) >= self.size:
            self._until.clear()
        self._until[self._key(term, sources)] = time.monotonic() + self.ttl

    @staticmethod
    def _key(term: str, sources: Sequence[str] | None) -> tuple[str, tuple[str, ...] | None]:
        return term.lower(), None if sources is None else tuple(sorted(sources))


def unknown_terms(
    live: LiveCollections,
    terms: Sequence[str],
    *,
    customer_id: str | None = None,
    sources: Sequence[str] | None = None,
    known: KnownTerms | None = None,
) -> list[str]:
    """The terms no searchable chunk contains: a keyword query of each (every word of it, for
    one object) over the policy chunks of `sources` (all, when None), then the customer's own
    records, never another customer's. What a question names that none of them ever mentions
    (a plan, a product, a place) the knowledge base cannot answer about. With no source to
    search (`sources` empty) nothing can be told: no term is called unknown."""
    asked = [t for t in terms if known is None or (t, sources) not in known]
    if not asked or (sources is not None and not sources):
        return []
    source_filter = _source_filter(sources)
    unknown = []
    with _transient(live, "keyword lookup"):
        targets = _targets(live, customer_id)
        for term in asked:
            found_in = next(
                (
                    kind
                    for kind, collection in targets
                    if collection.query.bm25(
                        query=term,
                        limit=1,
                        query_properties=_QUERY_PROPERTIES,
                        operator=BM25Operator.and_(),
                        filters=source_filter,
                        return_properties=[],
                    ).objects
                ),
                None,
            )
            if found_in is None:
                unknown.append(term)
            elif found_in is SourceKind.DOCUMENTS and known is not None:
                known.add(term, sources)
    return unknown


def _source_filter(sources: Sequence[str] | None) -> FilterReturn | None:
    """Only chunks of these sources; None (no filter) for every source."""
    return Filter.by_property("source").contains_any(list(sources)) if sources else None


@contextmanager
def _transient(live: LiveCollections, what: str) -> Iterator[None]:
    """Weaviate failing inside the block as a TransientError naming `what` failed; the aliases
    are looked up afresh next time (one may have been removed since it was seen)."""
    try:
        yield
    except WeaviateBaseError as exc:
        live.forget_aliases()
        raise TransientError(f"Weaviate {what} failed: {exc}") from exc


def _vectors(
    collections: dict[SourceKind, Collection],
    kept: Sequence[Candidate],
    recent: RecentVectors,
) -> dict[str, Sequence[float] | None]:
    """The stored vector of each kept object, by UUID (see `_recent_or_read`)."""

    def vector(obj: Object) -> Sequence[float] | None:
        return _flat(obj.vector.get("default"))

    return _recent_or_read(collections, kept, recent, vector, include_vector=True)


def _passage_rows(
    collections: dict[SourceKind, Collection],
    found: Sequence[Candidate],
    dimension: int,
    recent: RecentVectors,
) -> dict[str, Sequence[float] | None]:
    """Each candidate's passage rows, flat, by UUID (see `_recent_or_read`; None: it has none)."""

    def rows(obj: Object) -> Sequence[float] | None:
        decoded = decode_rows(str(obj.properties.get("passage_vectors") or ""), dimension)
        return None if decoded is None else array("f", decoded.ravel().tobytes())

    return _recent_or_read(collections, found, recent, rows, properties=["passage_vectors"])


def _recent_or_read(
    collections: dict[SourceKind, Collection],
    found: Sequence[Candidate],
    recent: RecentVectors,
    read: Callable[[Object], Sequence[float] | None],
    include_vector: bool = False,
    properties: Sequence[str] = (),
) -> dict[str, Sequence[float] | None]:
    """What `read` takes from each object, by UUID: from `recent` when it holds the chunk's
    (content, model), else one fetch per collection for the others. What is read is kept in
    `recent`, except None (an object without it may get it on a rewrite)."""
    keys = {str(obj.uuid): _vector_key(obj) for obj, _ in found}
    values: dict[str, Sequence[float] | None] = dict(recent.get_many(keys))
    for kind, collection in collections.items():
        ids = [obj.uuid for obj, of in found if of is kind and str(obj.uuid) not in values]
        if not ids:
            continue
        response = collection.query.fetch_objects(
            filters=Filter.by_id().contains_any(ids),
            limit=len(ids),
            include_vector=include_vector,
            return_properties=[*properties, "chunk_hash", "model_id"],  # the key, as of this read
        )
        fetched = {str(o.uuid): (_vector_key(o), read(o)) for o in response.objects}
        recent.add({key: v for key, v in fetched.values() if v is not None})
        values |= {uuid: v for uuid, (_, v) in fetched.items()}
    return values


def _flat(vector: object) -> list[float] | None:
    """A single vector as stored, or None (missing, or not one flat vector)."""
    if isinstance(vector, list) and vector and isinstance(vector[0], float):
        return vector
    return None


def _vector_key(obj: Object) -> tuple[str, str] | None:
    """What a chunk's vector is a function of: its embedded text's hash and the model."""
    chunk_hash, model = obj.properties.get("chunk_hash"), obj.properties.get("model_id")
    return (str(chunk_hash), str(model)) if chunk_hash and model else None


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


def by_passages(
    query_vector: Sequence[float],
    found: Sequence[Candidate],
    rows: Mapping[str, Sequence[float] | None],
) -> list[Candidate]:
    """`found` ordered by fused score plus the highest cosine of one of a candidate's passages
    with the query (embeddings/passages.py; `rows`, by UUID): a page one sentence of which
    answers the question
    goes before a page that is about its topic throughout. Scores in [0, 1] and cosines are
    added as they are: no weight to tune. When a candidate has no passage vectors (an object
    written by an older freshkb, until its document is embedded again), `found` stays as it is:
    a sum over some candidates only would rank by which were rewritten."""
    best = [best_similarity(query_vector, rows.get(str(obj.uuid))) for obj, _ in found]
    if any(similarity is None for similarity in best):
        return list(found)
    sums = [
        _score(obj) + (similarity or 0.0) for (obj, _), similarity in zip(found, best, strict=True)
    ]
    return [found[i] for i in sorted(range(len(found)), key=lambda i: -sums[i])]


def named_first(
    query: str,
    found: Sequence[Candidate],
    collections: dict[SourceKind, Collection],
    recent: RecentNames | None = None,
) -> list[Candidate]:
    """`found` in order, except that a candidate whose document leaves behind a name of the
    question goes after the others (core/document_names.py). The names are read from each
    document's first chunk, only when the question has a run of capitalised words and the
    candidates come from two documents or more: one fetch for those not in `recent`. The
    names only order candidates: if Weaviate cannot give them, `found` stays as it is."""
    policies = collections.get(SourceKind.DOCUMENTS)
    documents = {_document(obj) for obj, kind in found if kind is SourceKind.DOCUMENTS}
    if policies is None or len(documents) < 2 or not document_names.has_names(query):
        return list(found)
    recent = recent or RecentNames()
    names = recent.get_many(policies.name, documents)
    if missing := sorted(documents - names.keys()):
        try:
            response = policies.query.fetch_objects(
                filters=Filter.by_property("document_id").contains_any(missing)
                & Filter.by_property("position").equal(0),
                limit=len(missing),
                return_properties=["document_id", "document_names"],
            )
        except WeaviateBaseError:  # e.g. a collection from before names: not asked again soon
            recent.add(policies.name, dict.fromkeys(missing, ""))
            return list(found)
        read = dict.fromkeys(missing, "")  # a document without a first chunk: no names
        read |= {
            _document(o): str(o.properties.get("document_names") or "") for o in response.objects
        }
        recent.add(policies.name, read)
        names |= read
    encoded = [
        names.get(_document(obj), "") if kind is SourceKind.DOCUMENTS else "" for obj, kind in found
    ]
    texts = [str(obj.properties.get("text") or "") for obj, _ in found]
    misses = document_names.mismatches(query, encoded, texts)
    return [found[i] for i in sorted(range(len(found)), key=misses.__getitem__)]


def _document(obj: Object) -> str:
    return str(obj.properties.get("document_id", ""))


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


def _hit(
    obj: Object, kind: SourceKind, query_vector: Sequence[float], vector: Sequence[float] | None
) -> SearchHit:
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


def _cosine(query: Sequence[float], vector: Sequence[float] | None) -> float | None:
    """Cosine similarity of two vectors; None when the object came without a usable vector."""
    if vector is None or len(vector) != len(query):
        return None
    # numpy: the same sums in Python took ~0.3 ms per hit, ~1.4 ms of each search's CPU
    q, v = np.asarray(query, dtype=np.float64), np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(q) * np.linalg.norm(v))
    return round(float(q @ v) / norm, 6) if norm else None
