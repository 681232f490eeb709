"""An ingest's batches run at once through a Prefect task runner (issue 14): threads with one
or two batches in flight, and a real local Dask cluster, write the same objects and count the
same; a batch whose write fails fails the run, and the batches that did write are counted."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import pytest
from conftest import empty_index_and_ledger
from fixtures_files import shared_dir

from freshkb.core.config import Settings
from freshkb.core.errors import DataError
from freshkb.core.records import SourceKind
from freshkb.core.report import RunReport
from freshkb.flows.ingest import ingest_source
from freshkb.store.weaviate_store import WeaviateStore

pytestmark = [pytest.mark.integration]

SOURCE = "manuals"
BATCH = 2
MANUALS = 8  # product_info_1..8.md: four batches
DASK_PORT = int(os.environ.get("FRESHKB_TEST_DASK_PORT", "34300"))
# What differs between two runs of the same content: who wrote it, when, and how fast.
RUN_FIELDS = {"flow_run_id", "ingested_at"}
REPORT_RUN_FIELDS = {"flow_run_id", "stage_seconds", "started_at", "finished_at"}


def manuals_source() -> dict[str, Any]:
    """Eight outdoor-gear manuals of the shared corpus, as an inline source."""
    folder = shared_dir() / "corpus" / "policies" / "outdoor-manuals"
    return {
        "name": SOURCE,
        "kind": "documents",
        "location": str(folder),
        "owner": "tests",
        "include": [f"product_info_[1-{MANUALS}].md"],
    }


def live_objects(store: WeaviateStore) -> dict[str, dict[str, Any]]:
    """Every object of the live policy collection by UUID, without its run's own fields."""
    name = store.live_collection(SourceKind.DOCUMENTS)
    assert name is not None
    return {
        str(obj.uuid): {k: v for k, v in obj.properties.items() if k not in RUN_FIELDS}
        for obj in store.client.collections.get(name).iterator()
    }


def counts(report: RunReport) -> dict[str, Any]:
    """The report's counts, without what only says which run it was and how long it took.

    Vectors computed and reused are one figure: the first run fills the vector cache.
    """
    data = {k: v for k, v in report.to_dict().items() if k not in REPORT_RUN_FIELDS}
    data["embeddings"] = data.pop("embeddings_computed") + data.pop("embeddings_cached")
    data.pop("passages_embedded")  # computed by the first run only, the rest from the cache
    data["validation"].pop("results_file")  # named after the run
    return data


def fresh_ingest(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, **env: str
) -> tuple[RunReport, float]:
    """Ingest the manuals into an empty index; the report and its seconds."""
    empty_index_and_ledger(settings)
    monkeypatch.setenv("FRESHKB_INGEST_BATCH_DOCUMENTS", str(BATCH))
    for key, value in env.items():
        monkeypatch.setenv(f"FRESHKB_{key.upper()}", value)
    started = time.perf_counter()
    report = ingest_source(source_config=manuals_source())
    return report, time.perf_counter() - started


@pytest.fixture(scope="module")
def one_at_a_time(
    weaviate_settings: Settings, prefect_harness: None
) -> tuple[RunReport, dict[str, dict[str, Any]], float]:
    """The reference: the manuals ingested one batch at a time, and what the index held."""
    from freshkb.store.connection import connect

    with pytest.MonkeyPatch.context() as monkeypatch:
        report, seconds = fresh_ingest(weaviate_settings, monkeypatch, ingest_parallel_batches="1")
    assert report.status == "completed", report.error
    client = connect(weaviate_settings)
    try:
        objects = live_objects(WeaviateStore(client))
    finally:
        client.close()
    assert len(objects) == report.objects_written > MANUALS
    print(f"\n1 batch at a time (threads): {seconds:.1f}s")
    return report, objects, seconds


@pytest.mark.timeout(300)
def test_two_batches_at_once_write_the_same_objects_and_counts_as_one(
    store, one_at_a_time, monkeypatch
):
    from freshkb.flows import ingest

    reference, objects, _ = one_at_a_time
    in_flight, most, lock = [0], [0], threading.Lock()
    run_inline = ingest.run_inline

    def counted(stage: Any, *args: Any) -> Any:
        # a batch is in flight from its chunking to the end of its write
        if stage is ingest.chunk_task:
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
        try:
            return run_inline(stage, *args)
        finally:
            if stage is ingest.upsert_task:
                with lock:
                    in_flight[0] -= 1

    monkeypatch.setattr(ingest, "run_inline", counted)
    report, seconds = fresh_ingest(store_settings(), monkeypatch, ingest_parallel_batches="2")
    print(f"\n2 batches at once (threads): {seconds:.1f}s")
    assert report.status == "completed", report.error
    assert most[0] == 2, "two batches ran at once, never more"
    assert counts(report) == counts(reference)
    assert live_objects(store) == objects
    # every batch's stages are in the report, added up over the four batches
    assert {"chunk", "screen", "embed", "write", "delete", "verify"} <= set(report.stage_seconds)


@pytest.mark.timeout(300)
def test_a_failed_batch_fails_the_run_and_the_written_batches_are_counted(
    store, one_at_a_time, monkeypatch
):
    reference, _, _ = one_at_a_time
    calls, lock = [], threading.Lock()
    upsert = WeaviateStore.upsert

    def second_write_fails(self: WeaviateStore, embedded: list[Any], **kwargs: Any) -> Any:
        with lock:
            calls.append(len(embedded))
            number = len(calls)
        if number == 2:
            raise DataError("the test refused this batch's write")
        return upsert(self, embedded, **kwargs)

    monkeypatch.setattr(WeaviateStore, "upsert", second_write_fails)
    report, _ = fresh_ingest(store_settings(), monkeypatch, ingest_parallel_batches="2")

    assert report.status == "failed"
    assert "the test refused this batch's write" in (report.error or "")
    assert report.documents_new == MANUALS  # the whole plan passed the gate first
    stored = live_objects(store)
    # No write lost or counted twice: what the index holds is what the report says was written,
    # whole documents only (the refused batch wrote nothing), and less than the whole source.
    assert 0 < report.objects_written == len(stored) < reference.objects_written
    positions: dict[str, set[int]] = {}
    for obj in stored.values():
        positions.setdefault(obj["document_id"], set()).add(obj["position"])
        assert obj["chunk_count"] > obj["position"]
    chunk_counts = {obj["document_id"]: obj["chunk_count"] for obj in stored.values()}
    for document_id, found in positions.items():
        assert found == set(range(chunk_counts[document_id])), document_id
    assert len(positions) % BATCH == 0 and len(positions) < MANUALS
    assert report.objects_live is None, "the post-write check must not run after a failed batch"


@pytest.mark.timeout(420)
def test_a_local_dask_cluster_writes_the_same_objects(store, one_at_a_time, monkeypatch):
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL

    reference, objects, _ = one_at_a_time
    # The Dask workers are other processes: they reach the test's Prefect server through the
    # environment they start with (else each would start a temporary server of its own).
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        scheduler_port=DASK_PORT,
        dashboard_address=":0",
    ) as cluster:
        assert cluster.scheduler_address == f"tcp://127.0.0.1:{DASK_PORT}"
        report, seconds = fresh_ingest(
            store_settings(),
            monkeypatch,
            ingest_task_runner="dask",
            ingest_dask_address=cluster.scheduler_address,
            ingest_parallel_batches="2",
        )
        with Client(cluster) as client:
            # the batches ran in the Dask worker's process: it imported the ingest flow
            ran_there = client.run(lambda: "freshkb.flows.ingest" in sys.modules)
    print(f"\nDask (1 worker process, 2 threads, cold start included): {seconds:.1f}s")
    assert report.status == "completed", report.error
    assert counts(report) == counts(reference)
    assert live_objects(store) == objects
    assert list(ran_there.values()) == [True]


@pytest.mark.timeout(30)
def test_dask_without_an_address_is_a_configuration_error():
    from freshkb.core.errors import ConfigError
    from freshkb.flows.tasks import batch_runner

    with pytest.raises(ConfigError, match="FRESHKB_INGEST_DASK_ADDRESS"):
        batch_runner(Settings(ingest_task_runner="dask"))


def store_settings() -> Settings:
    """The session's settings (the test Weaviate, the temporary data directory)."""
    return Settings()
