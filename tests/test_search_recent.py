"""A search reads a chunk's vector from Weaviate once: later searches that keep the same chunk
take it from memory (store/recent.py), keyed by what the vector is a function of, so a chunk
rewritten with other text is read again; on a real Weaviate and in the logic alone."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from store_contract import DIM, MODEL, embedded, write

from freshkb.core import ids
from freshkb.core.records import EmbeddedChunk, SourceKind
from freshkb.store import search as search_module
from freshkb.store.recent import RecentVectors


def test_recent_vectors_keep_the_last_used_and_forget_the_oldest() -> None:
    recent = RecentVectors(size=2)
    recent.add({("h1", "m"): [1.0, 0.0], ("h2", "m"): [0.0, 1.0]})
    assert recent.get_many({"a": ("h1", "m")}) == {"a": pytest.approx([1.0, 0.0])}  # h1 used
    recent.add({("h3", "m"): [0.5, 0.5], None: [9.0, 9.0]})  # no key: not kept
    held = recent.get_many({"1": ("h1", "m"), "2": ("h2", "m"), "3": ("h3", "m"), "x": None})
    assert sorted(held) == ["1", "3"]  # h2, the least recently used, went first
    assert RecentVectors(size=0).get_many({"1": ("h1", "m")}) == {}


class FakeChunks:
    """A collection answering the vector fetch from a table by UUID (vector and chunk hash as
    stored now), counting the fetches."""

    def __init__(self, vectors: dict[str, list[float]], hashes: dict[str, str] | None = None):
        self.vectors, self.hashes, self.fetched = vectors, hashes or {}, []
        self.query = SimpleNamespace(fetch_objects=self.fetch_objects)

    def fetch_objects(self, filters: Any, **_: Any) -> Any:
        asked = [str(u) for u in filters.value]
        self.fetched.append(asked)
        return SimpleNamespace(
            objects=[
                SimpleNamespace(
                    uuid=u,
                    vector={"default": self.vectors[u]},
                    properties={"chunk_hash": self.hashes.get(u, ""), "model_id": MODEL},
                )
                for u in asked
            ]
        )


U1, U2 = (str(ids.chunk_uuid("doc", n)) for n in (1, 2))


def kept(uuid: str, chunk_hash: str, model: str = MODEL) -> tuple[Any, SourceKind]:
    properties = {"chunk_hash": chunk_hash, "model_id": model}
    return SimpleNamespace(uuid=uuid, properties=properties), SourceKind.DOCUMENTS


def test_only_vectors_not_held_are_fetched_and_a_new_text_or_model_is_fetched_again() -> None:
    chunks = FakeChunks({U1: [1.0, 0.0], U2: [0.0, 1.0]}, {U1: "h1", U2: "h2"})
    collections: Any = {SourceKind.DOCUMENTS: chunks}
    recent = RecentVectors()
    first = search_module._vectors(collections, [kept(U1, "h1"), kept(U2, "h2")], recent)
    again = search_module._vectors(collections, [kept(U1, "h1"), kept(U2, "h2")], recent)
    assert {u: list(v or ()) for u, v in again.items()} == first
    assert chunks.fetched == [[U1, U2]]  # the second time, none fetched
    chunks.vectors[U1], chunks.hashes[U1] = [0.6, 0.8], "h1-new"  # rewritten: other text
    rewritten = search_module._vectors(collections, [kept(U1, "h1-new"), kept(U2, "h2")], recent)
    assert rewritten[U1] == [0.6, 0.8] and chunks.fetched[-1] == [U1]  # only the rewritten one
    search_module._vectors(collections, [kept(U2, "h2", model="other-model")], recent)
    assert chunks.fetched[-1] == [U2]


def test_a_vector_rewritten_between_search_and_fetch_is_kept_under_its_own_hash() -> None:
    # The search saw U1 as "old"; by the fetch it had been rewritten as "new".
    chunks = FakeChunks({U1: [0.6, 0.8]}, {U1: "new"})
    recent = RecentVectors()
    search_module._vectors({SourceKind.DOCUMENTS: chunks}, [kept(U1, "old")], recent)  # type: ignore[dict-item]
    assert recent.get_many({"a": ("old", MODEL)}) == {}
    assert list(recent.get_many({"a": ("new", MODEL)})["a"]) == pytest.approx([0.6, 0.8])


def test_only_a_flat_list_of_floats_is_a_vector() -> None:
    assert search_module._flat([0.5, 0.5]) == [0.5, 0.5]
    assert search_module._flat([]) is None
    assert search_module._flat([[0.5, 0.5]]) is None  # a multi-vector
    assert search_module._flat(None) is None


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_rewritten_chunk_is_judged_by_its_new_vector_on_weaviate(store: Any) -> None:
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    query = [1.0, 0.0, 0.0, 0.0]
    write(store, embedded("refunds.md", ["refund window is 30 days"]))  # vector [1, 0, 0, 0]
    first = store.search("refund window", query, k=1)[0]
    assert first.relevance == pytest.approx(1.0)
    assert store.search("refund window", query, k=1)[0].relevance == first.relevance
    # The same chunk (same UUID) rewritten with new text and a vector away from the question.
    (item,) = embedded("refunds.md", ["refund window is 14 days"], version="v2")
    moved = replace(item.chunk, chunk_hash=ids.content_hash("refund window is 14 days"))
    write(store, [EmbeddedChunk(moved, (0.0, 1.0, 0.0, 0.0))])
    after = store.search("refund window", query, k=1)[0]
    assert after.uuid == first.uuid and after.relevance == pytest.approx(0.0)
