"""What the search path read from Weaviate moments ago and reads again: documents' names,
chunks' vectors and their passages' vectors. Each read saved is a query saved (a query is most
of a search's cost), and no cache can serve what a later write changed for long: names expire,
and vectors are keyed by what they are a function of (the chunk's embedded text and the
model)."""

from __future__ import annotations

import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


class RecentNames:
    """Documents' names (core/document_names.py) read in the last `ttl` seconds, by collection
    (as searched: the alias, when serving) and document id: a question's candidates come from
    the same few documents again and again, and each read is a query. A changed document's old
    names, or those of the version a rebuild replaced, serve at most `ttl` seconds, and they
    only order candidates."""

    def __init__(self, ttl: float = 60.0, size: int = 4096):
        self.ttl, self.size = ttl, size
        self._kept: dict[tuple[str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get_many(self, collection: str, documents: Iterable[str]) -> dict[str, str]:
        """The names held and unexpired, by document id ("" for a document without names)."""
        now = time.monotonic()
        with self._lock:
            found = {d: self._kept.get((collection, d), (0.0, "")) for d in documents}
        return {d: names for d, (until, names) in found.items() if until > now}

    def add(self, collection: str, names: dict[str, str]) -> None:
        """Hold these documents' names for `ttl` seconds; the oldest go first when full."""
        until = time.monotonic() + self.ttl
        with self._lock:
            for document, encoded in names.items():
                self._kept.pop((collection, document), None)  # re-added: now the newest
                self._kept[(collection, document)] = (until, encoded)
            while len(self._kept) > self.size:
                del self._kept[next(iter(self._kept))]


class RecentVectors:
    """The last `size` chunk vectors read, by (chunk hash, model id), as float32 arrays (1.5 KB
    each for 384 dimensions): a vector never changes for a given text and model, so nothing
    expires; the least recently used go first."""

    def __init__(self, size: int = 8192):
        self.size = size
        self._kept: OrderedDict[tuple[str, str], array[float]] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Mapping[str, tuple[str, str] | None]) -> dict[str, Sequence[float]]:
        """The vectors held, by the caller's id for each key."""
        found: dict[str, Sequence[float]] = {}
        with self._lock:
            for name, key in keys.items():
                if key is not None and (vector := self._kept.get(key)) is not None:
                    self._kept.move_to_end(key)
                    found[name] = vector
        return found

    def add(self, vectors: Mapping[tuple[str, str] | None, Sequence[float]]) -> None:
        """Keep these vectors (those without a key are not kept)."""
        with self._lock:
            for key, vector in vectors.items():
                if key is None or self.size <= 0:
                    continue
                self._kept[key] = array("f", vector)
                self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)


@dataclass(frozen=True)
class RecentReads:
    """The search path's reads kept for later searches: one per store."""

    names: RecentNames = field(default_factory=RecentNames)
    vectors: RecentVectors = field(default_factory=RecentVectors)
    # chunks' passage rows (embeddings/passages.py), flat: ~6 rows of 1.5 KB per chunk
    passages: RecentVectors = field(default_factory=lambda: RecentVectors(size=2048))
