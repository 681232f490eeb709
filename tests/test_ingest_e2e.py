"""End-to-end ingestion: real loaders, real model, real Prefect flow runs, real Weaviate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_files import shared_dir
from process_tree import processes_with, wait_until_gone
from weaviate.exceptions import WeaviateBaseError

from freshkb.core.config import Settings
from freshkb.core.records import SourceKind
from freshkb.embeddings.embedder import get_embedder
from freshkb.flows.ingest import ingest_source
from freshkb.store.weaviate_store import WeaviateStore

pytestmark = [pytest.mark.integration]

RETURNS = """# Returns policy

## Footwear

Unworn footwear can be returned within 60 days of purchase with the original receipt.
Worn footwear is accepted only under the warranty.

## Electronics

Opened electronics can be returned within 14 days; a 10% restocking fee applies.
"""

SHIPPING = """# Shipping

Standard shipping takes 3 to 5 business days. Orders over $75 ship free within the
contiguous United States. Express shipping arrives in 1 to 2 business days for $19.
"""

WARRANTY = """# Warranty

Tents and backpacks carry a two-year warranty against defects in materials and workmanship.
Damage from misuse, fire or pets is not covered. Claims need proof of purchase.
"""


def long_policy(paragraphs: int) -> str:
    """A Markdown document long enough to need several chunks."""
    body = "\n\n".join(
        f"## Clause {n}\n\nClause {n} explains how repair request {n} is handled: the customer "
        f"sends photos, the team replies within {n + 1} business days, and approved repairs are "
        "shipped back at no cost. Requests without photos take longer because staff must ask "
        "for them, which adds a full round trip to the process."
        for n in range(paragraphs)
    )
    return f"# Repairs handbook\n\n{body}\n"


def documents_source(folder: Path, name: str = "kb") -> dict[str, Any]:
    """Inline config of a documents source."""
    return {"name": name, "kind": "documents", "location": str(folder), "owner": "tests"}


def write_policies(folder: Path) -> None:
    """Three small Markdown policies."""
    (folder / "returns.md").write_text(RETURNS)
    (folder / "shipping.md").write_text(SHIPPING)
    (folder / "warranty.md").write_text(WARRANTY)


def stored_objects(
    store: WeaviateStore, kind: SourceKind = SourceKind.DOCUMENTS
) -> dict[str, dict]:
    """Every object of the live collection of `kind` (all tenants), keyed by UUID."""
    name = store.live_collection(kind)
    assert name is not None
    base = store.client.collections.get(name)
    collections = (
        [base]
        if kind is SourceKind.DOCUMENTS
        else [base.with_tenant(t) for t in base.tenants.get()]
    )
    return {
        str(obj.uuid): dict(obj.properties)
        for collection in collections
        for obj in collection.iterator()
    }


def search(store: WeaviateStore, text: str, k: int = 3, customer_id: str | None = None):
    """Hybrid search with the configured embedding model."""
    settings = Settings()
    embedder = get_embedder(settings.embedding_model, settings.embedding_device)
    return store.search(text, embedder.embed([text])[0], k=k, customer_id=customer_id)


def test_first_ingest_writes_every_chunk_and_search_finds_known_passage(
    store, prefect_harness, corpus_copy
):
    write_policies(corpus_copy)
    report = ingest_source(source_config=documents_source(corpus_copy))
    assert report.status == "completed", report
    assert report.documents_new == 3
    assert report.documents_failed == 0
    objects = stored_objects(store)
    assert report.objects_written == len(objects) == report.chunks_embedded
    assert {o["document_key"] for o in objects.values()} == {
        "returns.md",
        "shipping.md",
        "warranty.md",
    }
    for obj in objects.values():
        assert obj["source"] == "kb"
        assert obj["flow_run_id"] == report.flow_run_id
        assert obj["content_hash"] and obj["ingested_at"] and obj["title"]
    hits = search(store, "how long do I have to return shoes I have not worn?")
    assert hits[0].document_key == "returns.md"
    assert "60 days" in hits[0].text


def test_unchanged_corpus_reingest_writes_nothing(store, prefect_harness, corpus_copy):
    write_policies(corpus_copy)
    first = ingest_source(source_config=documents_source(corpus_copy))
    before = stored_objects(store)
    again = ingest_source(source_config=documents_source(corpus_copy))
    assert again.status == "completed"
    assert again.documents_unchanged == 3
    assert first.documents_reused == 0
    assert again.documents_reused == 3, "unchanged files are not partitioned again"
    assert again.documents_new == again.documents_changed == 0
    assert again.chunks_embedded == again.embeddings_computed == 0
    assert again.objects_written == again.objects_deleted == 0
    after = stored_objects(store)
    assert after == before, "an unchanged re-run must not rewrite any object"
    assert {o["flow_run_id"] for o in after.values()} == {first.flow_run_id}


def test_touching_a_file_without_editing_it_is_not_a_change(store, prefect_harness, corpus_copy):
    write_policies(corpus_copy)
    ingest_source(source_config=documents_source(corpus_copy))
    later = time.time() + 3600
    os.utime(corpus_copy / "shipping.md", (later, later))
    report = ingest_source(source_config=documents_source(corpus_copy))
    assert report.documents_unchanged == 3
    assert report.objects_written == 0


def test_editing_one_file_rewrites_only_its_chunks(store, prefect_harness, corpus_copy):
    write_policies(corpus_copy)
    first = ingest_source(source_config=documents_source(corpus_copy))
    before = stored_objects(store)
    (corpus_copy / "shipping.md").write_text(
        SHIPPING.replace("Orders over $75 ship free", "Orders over $120 ship free")
    )
    report = ingest_source(source_config=documents_source(corpus_copy))
    assert report.documents_changed == 1
    assert report.documents_unchanged == report.documents_reused == 2
    after = stored_objects(store)
    rewritten = {u for u, o in after.items() if o["flow_run_id"] == report.flow_run_id}
    assert {after[u]["document_key"] for u in rewritten} == {"shipping.md"}
    assert report.objects_written == len(rewritten)
    for uuid, obj in after.items():
        if obj["document_key"] != "shipping.md":
            assert obj == before[uuid]
            assert obj["flow_run_id"] == first.flow_run_id
    shipping_text = " ".join(
        o["text"] for o in after.values() if o["document_key"] == "shipping.md"
    )
    assert "$120" in shipping_text and "$75" not in shipping_text


def test_shortened_document_drops_its_tail_chunks(store, prefect_harness, corpus_copy):
    (corpus_copy / "repairs.md").write_text(long_policy(12))
    ingest_source(source_config=documents_source(corpus_copy))
    long_count = len(stored_objects(store))
    assert long_count >= 4
    (corpus_copy / "repairs.md").write_text(long_policy(1))
    report = ingest_source(source_config=documents_source(corpus_copy))
    after = stored_objects(store)
    assert report.documents_changed == 1
    assert len(after) == report.objects_written < long_count
    assert report.objects_deleted == long_count - len(after)
    assert sorted(o["position"] for o in after.values()) == list(range(len(after)))


def test_deleted_file_removes_its_chunks(store, prefect_harness, corpus_copy):
    write_policies(corpus_copy)
    ingest_source(source_config=documents_source(corpus_copy))
    warranty_objects = [
        o for o in stored_objects(store).values() if o["document_key"] == "warranty.md"
    ]
    (corpus_copy / "warranty.md").unlink()
    # One of three is 33%, above the default mass-deletion limit; this source allows a half.
    relaxed = {**documents_source(corpus_copy), "expectations": {"max_delete_share": 0.5}}
    report = ingest_source(source_config=relaxed)
    assert report.status == "completed", report.error
    assert report.documents_deleted == 1
    assert report.objects_deleted == len(warranty_objects) > 0
    assert all(o["document_key"] != "warranty.md" for o in stored_objects(store).values())


def test_file_turned_corrupt_keeps_its_last_good_chunks_and_is_reported(
    store, prefect_harness, corpus_copy
):
    write_policies(corpus_copy)
    (corpus_copy / "guide.pdf").write_bytes(b"")  # fails on every run
    # Half the files failing is allowed here, so the run passes its gate and syncs.
    lenient = {**documents_source(corpus_copy), "expectations": {"max_failed_share": 0.5}}
    first = ingest_source(source_config=lenient)
    assert first.documents_failed == 1
    assert first.failures[0].item == "guide.pdf"
    before = stored_objects(store)
    (corpus_copy / "returns.md").write_bytes(b"\xff\xfe\x00garbage\x00\xff" * 50)
    report = ingest_source(source_config=lenient)
    assert report.status == "completed", report.error
    assert {f.item for f in report.failures} == {"guide.pdf", "returns.md"}
    assert report.documents_deleted == 0
    assert stored_objects(store) == before


def test_outdoor_manuals_ingest_counts(store, prefect_harness):
    folder = shared_dir() / "corpus" / "policies" / "outdoor-manuals"
    config = {**documents_source(folder, "outdoor-manuals"), "include": ["*.md"]}
    report = ingest_source(source_config=config)
    assert report.status == "completed"
    assert report.documents_seen == report.documents_new == 20
    assert report.documents_failed == 0
    objects = stored_objects(store)
    assert len(objects) == report.objects_written == report.chunks_embedded
    per_document: dict[str, set[int]] = {}
    for obj in objects.values():
        per_document.setdefault(obj["document_id"], set()).add(obj["position"])
        assert obj["chunk_count"] > obj["position"]
    assert len(per_document) == 20
    hits = search(store, "What is the warranty on the TrailMaster X4 Tent?", k=5)
    assert any(hit.document_key == "product_info_1.md" for hit in hits)


def retail_source() -> dict[str, Any]:
    """The retail customers of the shared corpus: users and their orders."""
    return {
        "name": "retail-customers",
        "kind": "customers",
        "location": str(shared_dir() / "corpus" / "customers" / "retail"),
        "owner": "tests",
        "include": ["users.json", "orders.json"],
        "files": {
            "users.json": {"customer_id": "_key"},
            "orders.json": {"customer_id": "user_id", "key": "order_id"},
        },
    }


@pytest.fixture(scope="module")
def retail_users_orders() -> tuple[dict, dict]:
    """users.json and orders.json of the retail corpus."""
    folder = shared_dir() / "corpus" / "customers" / "retail"
    return (
        json.loads((folder / "users.json").read_text()),
        json.loads((folder / "orders.json").read_text()),
    )


def test_retail_customers_ingest_counts_and_isolation(store, prefect_harness, retail_users_orders):
    users, orders = retail_users_orders
    report = ingest_source(source_config=retail_source())
    assert report.status == "completed", report
    assert report.documents_new == len(users) + len(orders) == 1500
    assert report.documents_failed == 0
    collection = store.client.collections.get(store.live_collection(SourceKind.CUSTOMERS))
    assert len(collection.tenants.get()) == len(users)
    assert store.count(SourceKind.CUSTOMERS) == report.objects_written

    alice, bob = "noah_brown_6181", "ivan_santos_6635"
    for customer, other in ((alice, bob), (bob, alice)):
        hits = search(store, "order status and delivery address", k=20, customer_id=customer)
        records = [h for h in hits if h.kind is SourceKind.CUSTOMERS]
        assert records, f"{customer} should see their own records"
        assert {h.customer_id for h in records} == {customer}
        other_orders = [o for o, v in orders.items() if v["user_id"] == other]
        assert not any(order_id in h.text for h in hits for order_id in other_orders)
        assert all(other not in h.text for h in hits)

    # Isolation is the server's, not only our filter's: no tenant, no data.
    with pytest.raises(WeaviateBaseError):
        collection.query.fetch_objects(limit=1)


def test_retail_customers_unchanged_reingest_writes_nothing(store, prefect_harness):
    ingest_source(source_config=retail_source())
    again = ingest_source(source_config=retail_source())
    assert again.documents_unchanged == 1500
    assert again.chunks_embedded == again.objects_written == again.objects_deleted == 0


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    return env


def _freshkb(*args: str) -> list[str]:
    return [sys.executable, "-m", "freshkb.cli", *args]


def test_cli_ingest_and_search_print_json(store, corpus_copy, tmp_path):
    write_policies(corpus_copy)
    env = _cli_env(tmp_path)
    ingest = subprocess.run(
        _freshkb(
            "ingest",
            "--source",
            "cli-kb",
            "--kind",
            "documents",
            "--path",
            str(corpus_copy),
            "--json",
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    report = json.loads(ingest.stdout)
    assert report["source"] == "cli-kb" and report["documents_new"] == 3
    # The run went to the temporary server the command started early (cli/temporary_prefect.py);
    # Prefect did not start its own at the flow run, and left no link to a UI that is not there.
    assert "Starting temporary server" not in ingest.stderr
    assert "Beginning flow run" in ingest.stderr and "View at" not in ingest.stderr
    found = subprocess.run(
        _freshkb("search", "free shipping threshold", "--k", "2", "--json"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert found.returncode == 0, found.stderr[-3000:]
    hits = json.loads(found.stdout)
    assert hits[0]["document_key"] == "shipping.md"
    assert {"text", "source", "document_key", "title", "page", "score"} <= set(hits[0])


def test_killed_ingest_rerun_converges_without_duplicates(
    store, prefect_harness, tmp_path, retail_users_orders
):
    """SIGKILL an ingest while it writes, rerun it, compare with a clean run's objects."""
    env = _cli_env(tmp_path)
    config = tmp_path / "freshkb.yaml"
    source = retail_source()
    config.write_text(json.dumps({"sources": [source]}))  # JSON is YAML
    # Records are written customer by customer, starting with the owner of the first order
    # (orders.json sorts before users.json); once that tenant holds data, the other 499
    # customers are still to come.
    _, orders = retail_users_orders
    first_customer = next(iter(orders.values()))["user_id"]
    process = subprocess.Popen(
        _freshkb("ingest", "retail-customers", "--config", str(config), "--json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            alias = store.client.alias.get(alias_name="CustomerRecord")
            if alias is not None:
                collection = store.client.collections.get(alias.collection)
                try:
                    if collection.with_tenant(first_customer).aggregate.over_all().total_count:
                        break
                except WeaviateBaseError:
                    pass  # tenant not created yet
            time.sleep(0.02)
    finally:
        # The whole process group: the CLI and whatever it started in its own group. No exit
        # handler runs, so the Prefect server it started in a session of its own must stop by
        # itself (core/parent_bound.py).
        server = processes_with(f"PREFECT_HOME={env['PREFECT_HOME']}", "create_app")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert server, "the run had started its temporary Prefect server"
    left = wait_until_gone(f"PREFECT_HOME={env['PREFECT_HOME']}", "create_app")
    assert left == [], "the killed run's Prefect server lives on"
    partial = store.count(SourceKind.CUSTOMERS)
    assert 0 < partial < 1500, f"kill did not land mid-write ({partial} objects)"

    store._physical.clear()
    rerun = ingest_source(source_config=source)
    assert rerun.status == "completed"
    assert rerun.documents_new + rerun.documents_changed > 0
    converged = stored_objects(store, SourceKind.CUSTOMERS)

    store.client.alias.delete(alias_name="CustomerRecord")
    store.client.collections.delete_all()
    store._physical.clear()
    clean = ingest_source(source_config=source)
    reference = stored_objects(store, SourceKind.CUSTOMERS)
    assert clean.objects_written == len(reference)
    assert set(converged) == set(reference), "same UUIDs: no duplicates, nothing missing"
    for uuid, obj in reference.items():
        for field in ("text", "content_hash", "chunk_hash", "document_id", "customer_id"):
            assert converged[uuid][field] == obj[field]


def test_unreachable_source_fails_alone_in_an_all_sources_run(
    store, prefect_harness, corpus_copy, tmp_path
):
    from freshkb.flows.ingest import ingest_all

    write_policies(corpus_copy)
    config = tmp_path / "freshkb.yaml"
    config.write_text(
        json.dumps(
            {
                "sources": [
                    {**documents_source(tmp_path / "unmounted", "gone"), "owner": "tests"},
                    documents_source(corpus_copy, "kb"),
                ]
            }
        )
    )
    gone, good = ingest_all(str(config))
    assert gone.status == "failed"
    assert "does not exist" in gone.error and "unmounted" in gone.error
    assert good.status == "completed" and good.documents_new == 3
