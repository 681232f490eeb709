"""A question naming one product or plan is answered from that one's document: candidates whose
document uses the name far less than another candidate's go after the others
(core/document_names.py), on a real Weaviate and in the logic alone."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from store_contract import DIM, MODEL, embedded, write
from weaviate.exceptions import WeaviateBaseError

from freshkb.core import document_names
from freshkb.core.records import EmbeddedChunk, LoadedDocument, Section, SourceKind
from freshkb.embeddings.chunking import ChunkingPolicy, chunk_document
from freshkb.store import search as search_module
from freshkb.store.recent import RecentNames


def test_question_runs_drop_lone_clause_openers_quotes_and_inner_capitals() -> None:
    question = 'Hi, Does the "Alpine Explorer Tent\u2019s" fly fit? Also, Northwind Health Plus'
    assert document_names.question_runs(question) == [
        (["Alpine", "Explorer", "Tent"], False),
        (["Northwind", "Health", "Plus"], True),  # after "Also," it opens a clause
    ]
    assert document_names.question_runs("Where is my order?") == []
    assert document_names.question_runs("Is my iPhone from eBay covered?") == []
    assert document_names.question_runs("Is the SkyView 2-Person Tent dry?") == [
        (["SkyView", "2-Person", "Tent"], False)
    ]
    assert document_names.question_runs("Can I pay in Model 3 form?") == [
        (["Can", "I"], True),
        (["Model"], False),
    ]


def table(**counts: int) -> str:
    return json.dumps({"names": counts, "floor": 0})


PLUS = table(**{"Northwind Health Plus": 300})
STANDARD = table(**{"Northwind Standard": 300})


def test_a_span_with_the_clause_opener_needs_three_letters_besides_it() -> None:
    faq = table(**{"Can I": 12, "Can I Pay": 4})  # an FAQ's headings: "Can I open..."
    assert document_names.mismatches("Can I pay twice?", [faq, STANDARD]) == [0, 0]
    assert not document_names.has_names("Can I pay twice?")
    assert document_names.mismatches("Northwind Health Plus covers it?", [PLUS, STANDARD]) == [0, 1]


def test_encode_counts_runs_and_a_sentence_opening_run_without_its_opener() -> None:
    encoded = document_names.encode(
        [
            "Alpine Explorer Tent",
            "The Alpine Explorer Tent is light. Set up the Alpine Explorer Tent.",
            "Where do I send it? Where is it? Where now? Pitch it. Pitch here. Pitch.",
        ]
    )
    names, floor = document_names.decode(encoded) or ({}, -1)
    assert names["Alpine Explorer Tent"] == 3  # the title, "The ..." without "The", the last
    assert names["The Alpine Explorer Tent"] == 1
    assert "Where" not in names and "Pitch" not in names  # a lone sentence opener is no name
    assert floor == 0  # nothing left out: a name not listed is never used
    assert document_names.decode("not json") is None and document_names.decode("") is None


def test_encode_keeps_the_most_used_names_and_bounds_the_rest(monkeypatch: Any) -> None:
    monkeypatch.setattr(document_names, "KEPT", 2)
    text = "We use Alpha Team. " * 3 + "We use Bravo Team. " * 2 + "We use Charlie Team."
    names, floor = document_names.decode(document_names.encode([text])) or ({}, -1)
    assert names == {"Alpha Team": 3, "Bravo Team": 2}
    assert floor == 2  # Charlie Team, left out, is used at most twice
    bounded = json.dumps({"names": names, "floor": floor})
    charlie = table(**{"Charlie Team": 40})
    assert document_names.mismatches("Is Charlie Team here?", [bounded, charlie]) == [1, 0]


def test_a_document_about_another_product_goes_after_the_named_ones() -> None:
    question = "What is the return policy for the SkyView Tent?"
    alpine, skyview = table(**{"Alpine Explorer Tent": 9}), table(**{"SkyView Tent": 9})
    assert document_names.mismatches(question, [alpine, skyview]) == [1, 0]


def test_a_policy_that_names_no_product_keeps_its_place() -> None:
    question = "Can I return the SkyView 2-Person Tent after 45 days?"
    policy = document_names.encode(["Returns", "Items may be returned within 30 days. " * 5])
    manual = document_names.encode(["The SkyView 2-Person Tent sleeps two. " * 10])
    alpine = document_names.encode(["The Alpine Explorer Tent sleeps four. " * 10])
    assert document_names.mismatches(question, [policy, manual, alpine]) == [0, 0, 1]
    # nor does the handbook of the company a question names move a document of its own
    handbook = document_names.encode(["Contoso Electronics pays. " * 30])
    perks = document_names.encode(["PerksPlus pays for gyms at Contoso Electronics."])
    question = "Does Contoso Electronics reimburse gym memberships?"
    assert document_names.mismatches(question, [handbook, perks]) == [0, 0]


def test_a_name_counts_inside_a_longer_run_and_a_long_run_names_no_single_word() -> None:
    manual = document_names.encode(["The TrailMaster X4 Tent sleeps four. " * 6])
    catalog = document_names.encode(["The TrailMaster X4 is our best. " * 6])
    assert document_names.mismatches("How do I pitch the TrailMaster X4?", [manual, catalog]) == [
        0,
        0,
    ]
    # a comparison table's header line runs the two plans' names together
    brochure = document_names.encode(["Plan Northwind Health Plus Northwind Standard"] * 13)
    question = "Does Northwind Standard cover vision?"
    assert document_names.mismatches(question, [PLUS, STANDARD, brochure]) == [1, 0, 0]
    # no document uses the whole name: the run does not fall back to one word of it
    handbook = document_names.encode(["Contoso Electronics pays. " * 30])
    wellness = document_names.encode(["The Wellness Center opens at nine. " * 2])
    question = "Is the Contoso Wellness Center open on weekends?"
    assert document_names.mismatches(question, [handbook, wellness]) == [0, 0]


def test_a_run_names_its_longest_span_some_document_uses() -> None:
    alpine, skyview = table(**{"Alpine Explorer Tent": 9}), table(**{"SkyView Tent": 9})
    # the opener and a word after the name are part of the run, not of the name
    question = "What SkyView Tent Waterproofing is there? Is it Alpine Explorer Tent Approved?"
    assert document_names.mismatches(question, [alpine, skyview]) == [1, 1]
    assert document_names.mismatches("Which SkyView Tent Parts?", [alpine, skyview]) == [1, 0]


def test_left_behind_at_most_twice_and_at_most_a_tenth_as_often() -> None:
    question = "Does Northwind Standard cover it?"

    def uses(n: int) -> str:
        return table(**{"Northwind Standard": n, "Northwind Health Plus": 50})

    assert document_names.mismatches(question, [uses(1), uses(10)]) == [1, 0]  # a tenth
    assert document_names.mismatches(question, [uses(2), uses(19)]) == [0, 0]  # over a tenth
    assert document_names.mismatches(question, [uses(3), uses(300)]) == [0, 0]  # three times


def test_a_name_the_passages_also_write_in_lower_case_decides_nothing() -> None:
    question = "Is the tent Storm Shield rated?"
    documents = [table(**{"Storm Shield": 9}), table(**{"Storm Guard": 5})]
    assert document_names.mismatches(question, documents) == [0, 1]
    passages = ["Rated storm\nshield, with taped seams."]  # a line break inside counts too
    assert document_names.mismatches(question, documents, passages) == [0, 0]
    # as part of another word it is not the phrase
    assert document_names.mismatches(question, documents, ["storm shielding"]) == [0, 1]


def test_quotes_and_bullets_keep_the_name_whole() -> None:
    assert document_names.question_runs("Is the 'SkyView Tent' dry?") == [
        (["SkyView", "Tent"], False)
    ]
    assert document_names.question_runs("- Where is my TrailMaster X4 Tent?") == [
        (["TrailMaster", "X4", "Tent"], False)
    ]
    names, _ = document_names.decode(
        document_names.encode(["Buy 'Northwind Standard' now."] * 3)
    ) or ({}, 0)
    assert names == {"Northwind Standard": 3}


def test_names_decide_nothing_when_unknown_rare_bounded_or_calendar() -> None:
    question = "What is the return policy for the SkyView Tent?"
    skyview, alpine = table(**{"SkyView Tent": 9}), table(**{"Alpine Explorer Tent": 9})
    # a document written before names were stored (or a customer record): nothing is known
    assert document_names.mismatches(question, ["", skyview]) == [0, 0]
    # a name used twice at most, by any candidate, is too rare to tell documents apart
    assert document_names.mismatches(question, [alpine, table(**{"SkyView Tent": 2})]) == [0, 0]
    # left out of a long list whose floor is 5: it may be used 5 times, enough to stay
    bounded = json.dumps({"names": {"Other Tent": 40}, "floor": 5})
    assert document_names.mismatches(question, [bounded, skyview]) == [0, 0]
    # a question without names leaves every document alone
    assert document_names.mismatches("how do refunds work?", [alpine, skyview]) == [0, 0]
    # months and days are no names, however often a document writes them
    months = table(**{"January Sale": 40})
    assert document_names.mismatches("Open in January?", [table(**{"March Sale": 9}), months]) == [
        0,
        0,
    ]


def test_only_the_first_chunk_of_a_policy_document_carries_its_names() -> None:
    sections = tuple(
        Section(text=f"The SkyView Tent part {n}. " + "words " * 120, page=n + 1) for n in range(3)
    )
    document = LoadedDocument(
        document_id="d1",
        source="manuals",
        kind=SourceKind.DOCUMENTS,
        key="skyview.md",
        title="SkyView Tent",
        sections=sections,
        content_hash="h",
        modified_at=datetime.now(UTC),
    )
    chunks = chunk_document(document, ChunkingPolicy.for_window(128))
    assert len(chunks) >= 2
    names, _ = document_names.decode(chunks[0].document_names) or ({}, 0)
    assert names["SkyView Tent"] == 4  # the title and each section's opening run, opener dropped
    assert all(chunk.document_names == "" for chunk in chunks[1:])
    record = replace(document, kind=SourceKind.CUSTOMERS, customer_id="C-1")
    assert all(
        chunk.document_names == ""
        for chunk in chunk_document(record, ChunkingPolicy.for_window(128))
    )


def manual(key: str, product: str, policy: str, vector: list[float]) -> list[EmbeddedChunk]:
    """A two-chunk manual whose chunks never say the product's name (only its names table
    does, as a long manual's other pages would): an overview, then a return policy."""
    texts = ["Overview: sleeps two, pitch on flat ground.", policy]
    names = document_names.encode([f"The {product} is ours."] * 5)
    items = [replace(item.chunk, title="Tent manual") for item in embedded(key, texts)]
    return [
        EmbeddedChunk(replace(items[0], document_names=names), (0.0, 1.0, 0.0, 0.0)),
        EmbeddedChunk(items[1], tuple(vector)),
    ]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_named_products_return_policy_comes_first_on_weaviate(
    store: Any, monkeypatch: Any
) -> None:
    store.ensure_schema(SourceKind.DOCUMENTS, MODEL, DIM)
    # The Alpine return policy is the closer to the question, in words and in vector.
    alpine_policy = "The return policy: unused items may be returned within 30 days."
    skyview_policy = "Unused items may be sent back within 30 days for a full refund."
    write(store, manual("alpine.md", "Alpine Explorer Tent", alpine_policy, [1.0, 0.0, 0.0, 0.0]))
    write(store, manual("skyview.md", "SkyView Tent", skyview_policy, [0.9, 0.1, 0.0, 0.0]))
    query, vector = "What is the return policy for the SkyView Tent?", [1.0, 0.0, 0.0, 0.0]

    monkeypatch.setattr(document_names, "NAME_SHARE", -1.0)  # names off: closeness alone
    assert store.search(query, vector, k=2)[0].document_key == "alpine.md"

    monkeypatch.setattr(document_names, "NAME_SHARE", 0.1)
    hits = store.search(query, vector, k=2)
    assert [h.document_key for h in hits] == ["skyview.md", "skyview.md"]
    # without a name in the question, closeness decides as before
    assert store.search("What is the return policy?", vector, k=1)[0].document_key == "alpine.md"


class FakePolicies:
    """A policy collection answering the names fetch from a table, counting the fetches."""

    def __init__(self, name: str, names: dict[str, str]):
        self.name, self.names, self.fetches = name, names, 0
        self.query = SimpleNamespace(fetch_objects=self.fetch_objects)

    def fetch_objects(self, **_: Any) -> Any:
        self.fetches += 1
        objects = [
            SimpleNamespace(properties={"document_id": d, "document_names": n})
            for d, n in self.names.items()
        ]
        return SimpleNamespace(objects=objects)


def candidate(document: str, kind: SourceKind = SourceKind.DOCUMENTS) -> tuple[Any, SourceKind]:
    return SimpleNamespace(properties={"document_id": document}), kind


def test_names_read_in_the_last_minute_are_not_fetched_again() -> None:
    question = "What is the return policy for the SkyView Tent?"
    policies = FakePolicies(
        "PolicyChunk",
        {"alpine": table(**{"Alpine Explorer Tent": 9}), "skyview": table(**{"SkyView Tent": 9})},
    )
    found = [candidate("alpine"), candidate("rec", SourceKind.CUSTOMERS), candidate("skyview")]
    recent = RecentNames()
    for _ in range(3):
        order = search_module.named_first(question, found, {SourceKind.DOCUMENTS: policies}, recent)
        # the record knows no names: never put back; the Alpine manual goes last
        assert [obj.properties["document_id"] for obj, _ in order] == ["rec", "skyview", "alpine"]
    assert policies.fetches == 1
    other = FakePolicies("PolicyChunk_v2", policies.names)  # another collection: its own entries
    search_module.named_first(question, found, {SourceKind.DOCUMENTS: other}, recent)
    assert other.fetches == 1
    expired = RecentNames(ttl=0.0)
    for _ in range(2):
        search_module.named_first(question, found, {SourceKind.DOCUMENTS: other}, expired)
    assert other.fetches == 3


def test_the_order_stays_when_weaviate_cannot_give_the_names() -> None:
    class Down(FakePolicies):
        def fetch_objects(self, **_: Any) -> Any:
            raise WeaviateBaseError("connection refused")

    question = "What is the return policy for the SkyView Tent?"
    found = [candidate("alpine"), candidate("skyview")]
    down = Down("PolicyChunk", {})
    assert search_module.named_first(question, found, {SourceKind.DOCUMENTS: down}) == found


def test_a_document_without_a_first_chunk_is_not_asked_for_again() -> None:
    question = "What is the return policy for the SkyView Tent?"
    policies = FakePolicies("PolicyChunk", {"skyview": table(**{"SkyView Tent": 9})})
    found = [candidate("alpine"), candidate("skyview")]  # alpine's first chunk is gone
    recent = RecentNames()
    for _ in range(2):
        order = search_module.named_first(question, found, {SourceKind.DOCUMENTS: policies}, recent)
        assert [obj.properties["document_id"] for obj, _ in order] == ["alpine", "skyview"]
    assert policies.fetches == 1


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_collection_from_before_names_leaves_the_order_as_it_is(
    store: Any, weaviate_settings: Any
) -> None:
    from weaviate.classes.config import Configure, DataType, Property

    from freshkb.store.connection import connect

    client = connect(weaviate_settings)
    try:
        # Written by an older freshkb: neither a names property nor (here) positions.
        client.collections.create(
            "OldChunks",
            properties=[Property(name="document_id", data_type=DataType.TEXT)],
            vector_config=Configure.Vectors.self_provided(),
        )
        old = client.collections.get("OldChunks")
        old.data.insert({"document_id": "alpine"}, vector=[1.0, 0.0, 0.0, 0.0])
        question = "What is the return policy for the SkyView Tent?"
        found = [candidate("alpine"), candidate("skyview")]
        order = search_module.named_first(question, found, {SourceKind.DOCUMENTS: old})
        assert order == found
    finally:
        client.collections.delete("OldChunks")
        client.close()


def test_a_name_is_written_lower_only_as_a_phrase_of_its_own_in_lower_case() -> None:
    _written_lower = document_names._written_lower
    assert _written_lower("Health Plus", ["ask about the health\n  plus option"])  # any spacing
    assert not _written_lower("Health Plus", ["Health Plus members", "plus a health check"])
    assert not _written_lower("Health Plus", ["the health plus-up fee", "superhealth plus"])
    assert not _written_lower("Health Plus", [])
