"""A multi-record file that fails to load as a whole keeps every live record it held.

Real loaders on real files; the index is stood in for by what the first load would have
written (document id, key, hash, chunk count), which is what the sync plan compares against.
The end-to-end run through Weaviate and the gate is in tests/test_gate_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from freshkb.core.records import LoadResult, StoredDocument, SyncPlan
from freshkb.core.sources import parse_source
from freshkb.loaders import loader_for
from freshkb.store.sync import plan_sync


def as_stored(result: LoadResult) -> dict[str, StoredDocument]:
    """What the index holds after writing a load completely (one chunk per document)."""
    return {
        doc.document_id: StoredDocument(
            doc.document_id, doc.content_hash, 1, True, doc.customer_id, doc.key
        )
        for doc in result.documents
    }


def reload_and_plan(source, stored: dict[str, StoredDocument]) -> tuple[LoadResult, SyncPlan]:
    """Load the source again and plan against `stored`."""
    result = loader_for(source).load()
    return result, plan_sync(source.name, result.documents, result.failures, stored)


def customers_folder(folder: Path) -> None:
    """users.csv (6 users) and orders.json (4 orders) of those users."""
    folder.mkdir()
    rows = ["customer_id,name,email"] + [f"C-{i},User {i},u{i}@example.com" for i in range(6)]
    (folder / "users.csv").write_text("\n".join(rows) + "\n")
    orders = [
        {"order_id": f"O-{i}", "customer_id": f"C-{i}", "status": "shipped"} for i in range(4)
    ]
    (folder / "orders.json").write_text(json.dumps(orders, indent=2))


def customers(folder: Path):
    """The customers source over `folder`: orders keyed by order_id."""
    return parse_source(
        {
            "name": "crm",
            "kind": "customers",
            "location": str(folder),
            "customer_id": "customer_id",
            "files": {"orders.*": {"key": "order_id"}},
        }
    )


def test_truncated_orders_json_keeps_every_live_order(tmp_path):
    folder = tmp_path / "crm"
    customers_folder(folder)
    source = customers(folder)
    first = loader_for(source).load()
    assert len(first.documents) == 10 and not first.failures
    text = (folder / "orders.json").read_text()
    (folder / "orders.json").write_text(text[: len(text) // 2])

    result, plan = reload_and_plan(source, as_stored(first))

    assert [f.item for f in result.failures] == ["orders.json"]
    assert plan.deleted == ()
    kept = sorted(doc.key for doc in plan.kept_after_failure)
    assert kept == [f"orders.json:O-{i}" for i in range(4)]
    assert len(plan.unchanged) == 6


def test_parquet_with_a_bad_footer_keeps_every_live_record(tmp_path):
    folder = tmp_path / "crm"
    folder.mkdir()
    frame = pd.DataFrame({"customer_id": [f"C-{i}" for i in range(5)], "plan": ["gold"] * 5})
    frame.to_parquet(folder / "accounts.parquet")
    source = customers(folder)
    first = loader_for(source).load()
    assert len(first.documents) == 5
    data = (folder / "accounts.parquet").read_bytes()
    (folder / "accounts.parquet").write_bytes(data[:-12] + b"\x00" * 8 + b"PAR1")

    result, plan = reload_and_plan(source, as_stored(first))

    assert [f.item for f in result.failures] == ["accounts.parquet"]
    assert "Parquet" in result.failures[0].reason
    assert plan.deleted == () and len(plan.kept_after_failure) == 5


def test_json_article_array_cut_in_half_keeps_every_live_article(tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    articles = [
        {"id": f"A{i}", "title": f"Article {i}", "content": f"Policy text number {i}."}
        for i in range(4)
    ]
    (folder / "articles.json").write_text(json.dumps(articles))
    (folder / "returns.md").write_text("# Returns\n\nReturns within 30 days.\n")
    source = parse_source({"name": "kb", "kind": "documents", "location": str(folder)})
    first = loader_for(source).load()
    assert len(first.documents) == 5
    text = (folder / "articles.json").read_text()
    (folder / "articles.json").write_text(text[: len(text) // 2])

    result, plan = reload_and_plan(source, as_stored(first))

    assert [f.item for f in result.failures] == ["articles.json"]
    assert plan.deleted == ()
    assert sorted(d.key for d in plan.kept_after_failure) == [
        f"articles.json#A{i}" for i in range(4)
    ]


def test_a_record_failing_alone_inside_a_good_file_is_still_deleted(tmp_path):
    folder = tmp_path / "crm"
    customers_folder(folder)
    source = customers(folder)
    first = loader_for(source).load()
    orders = json.loads((folder / "orders.json").read_text())
    orders[0]["customer_id"] = ""  # this record no longer loads; the file does
    (folder / "orders.json").write_text(json.dumps(orders))

    result, plan = reload_and_plan(source, as_stored(first))

    assert [f.item for f in result.failures] == ["orders.json record 1"]
    assert [doc.key for doc in plan.deleted] == ["orders.json:O-0"]
    assert plan.kept_after_failure == ()


def test_a_file_that_only_shares_a_name_prefix_is_not_kept(tmp_path):
    folder = tmp_path / "crm"
    customers_folder(folder)
    orders = json.loads((folder / "orders.json").read_text())
    (folder / "orders.jsonl").write_text("\n".join(json.dumps(o) for o in orders) + "\n")
    source = customers(folder)
    first = loader_for(source).load()
    assert len(first.documents) == 14
    (folder / "orders.jsonl").unlink()
    (folder / "orders.json").write_text("{not json")

    _, plan = reload_and_plan(source, as_stored(first))

    assert {d.key.split(":")[0] for d in plan.kept_after_failure} == {"orders.json"}
    assert {d.key.split(":")[0] for d in plan.deleted} == {"orders.jsonl"}
