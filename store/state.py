"""What the index holds of a source: per document its hash and whether all its chunks are there."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from weaviate.classes.query import Filter
from weaviate.collections import Collection

from freshkb.core import ids
from freshkb.core.records import ExpectedDocument, SourceKind, StoredDocument
from freshkb.store.collections import LiveCollections

log = logging.getLogger(__name__)

_STATE_PROPERTIES = [
    "source",
    "document_id",
    "document_key",
    "content_hash",
    "chunk_count",
    "position",
]


@dataclass
class _Seen:
    """What the scan found of one document so far."""

    chunk_count: int
    customer_id: str | None
    key: str
    hashes: set[str] = field(default_factory=set)
    positions: set[int] = field(default_factory=set)

    def stored(self, document_id: str) -> StoredDocument:
        """The document as the sync plan compares it."""
        # Mixed hashes mean a write was interrupted between two versions: treat as changed.
        stored_hash = next(iter(self.hashes)) if len(self.hashes) == 1 else ""
        return StoredDocument(
            document_id=document_id,
            content_hash=stored_hash,
            chunk_count=self.chunk_count,
            complete=self.positions == set(range(self.chunk_count)),
            customer_id=self.customer_id,
            key=self.key,
        )


def stored_documents(
    live: LiveCollections, source: str, kind: SourceKind
) -> dict[str, StoredDocument]:
    """Per document of `source`: its content hash, expected and present chunk counts."""
    props = _STATE_PROPERTIES + (["customer_id"] if kind is SourceKind.CUSTOMERS else [])
    seen: dict[str, _Seen] = {}
    for shard in live.shards(kind):
        for obj in shard.iterator(return_properties=props):
            p = obj.properties
            if p.get("source") != source:
                continue
            doc = seen.setdefault(
                str(p["document_id"]),
                _Seen(
                    chunk_count=opt_int(p.get("chunk_count")) or 0,
                    customer_id=opt_str(p.get("customer_id")),
                    key=str(p.get("document_key") or ""),
                ),
            )
            doc.hashes.add(str(p["content_hash"]))
            doc.positions.add(opt_int(p.get("position")) or 0)
    return {doc_id: doc.stored(doc_id) for doc_id, doc in seen.items()}


def count(live: LiveCollections, kind: SourceKind, source: str | None = None) -> int:
    """Objects of a kind (optionally of one source) in the collection in use."""
    flt = Filter.by_property("source").equal(source) if source else None
    return sum(
        int(shard.aggregate.over_all(filters=flt).total_count or 0) for shard in live.shards(kind)
    )


def settled_count(
    read: Callable[[], int],
    expected: int,
    *,
    within: float,
    poll: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """The count once it equals `expected`, else the last one read when `within` seconds pass.

    On a replicated index a filtered count is answered by the replica the request lands on,
    whatever the read consistency level (weaviate/weaviate#10811 made only the unfiltered
    count cluster-aware), and that replica may not have applied the last QUORUM write yet. A
    single node's count is final: `within=0` reads once.
    """
    started = clock()
    found = first = read()
    while found != expected and clock() < started + within:
        sleep(poll)
        found = read()
    if first != expected:
        log.warning(
            "post-write count read %d, expected %d: %s after %.1f s",
            first,
            expected,
            "matched" if found == expected else f"still {found}",
            clock() - started,
        )
    return found


def missing(
    live: LiveCollections, kind: SourceKind, expected: Sequence[ExpectedDocument]
) -> list[str]:
    """UUIDs of the expected chunks that no copy answering at the confirming level holds.

    Each object is read by id, the one read Weaviate answers from several copies at a
    level: at QUORUM a chunk a QUORUM write stored is found even where the copy that answers
    filtered counts has not applied it yet (the coordinator repairs such a copy as it reads).
    """
    absent: list[str] = []
    handles: dict[str | None, Collection] = {}  # one per tenant: each costs an alias lookup
    for doc in expected:
        if doc.customer_id not in handles:
            handles[doc.customer_id] = live.confirming(kind, doc.customer_id)
        handle = handles[doc.customer_id]
        for position in range(doc.chunk_count):
            uuid = ids.chunk_uuid(doc.document_id, position)
            if not handle.data.exists(uuid):
                absent.append(uuid)
    return absent


def opt_str(value: object) -> str | None:
    """A stored text property, None when empty or absent."""
    return None if value in (None, "") else str(value)


def opt_int(value: object) -> int | None:
    """A stored number property, None when absent."""
    return None if value is None else int(value)  # type: ignore[call-overload]
