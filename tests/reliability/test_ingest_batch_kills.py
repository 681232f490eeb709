"""An ingest written in several batches: the same index as one batch, stage seconds summed
over the batches, and a SIGKILL between two batches repaired by the rerun.

Runs alternate between the two versions of harness.py's small corpus; each update rewrites
three documents, so a batch size of 2 makes two batches.
"""

from __future__ import annotations

from typing import Any

import pytest

from freshkb.core.config import Settings

from .harness import (
    IngestRunner,
    RunOutcome,
    corpus_versions,
    index_differences,
    index_objects,
    ledger_view,
)

pytestmark = [pytest.mark.integration]

SOURCE = "batched"
# One batch after the other, so the kill lands between two batches.
TWO_PER_BATCH = {"FRESHKB_INGEST_BATCH_DOCUMENTS": "2", "FRESHKB_INGEST_PARALLEL_BATCHES": "1"}
WRITE_STAGES = ("chunk", "screen", "embed", "write")


def stage_spans(outcome: RunOutcome, stage: str) -> list[float]:
    """Seconds between each `before:<stage>` and the `after:<stage>` that follows it."""
    spans, started = [], None
    for event in outcome.events:
        if event["event"] == f"before:{stage}":
            started = event["t"]
        elif event["event"] == f"after:{stage}" and started is not None:
            spans.append(event["t"] - started)
            started = None
    return spans


def completed(outcome: RunOutcome) -> dict[str, Any]:
    """The report of a run that must have completed."""
    assert outcome.status == 0, outcome.crash
    assert outcome.report and outcome.report["status"] == "completed", outcome.report
    return outcome.report


@pytest.mark.timeout(600)
def test_batched_ingest_matches_one_batch_and_a_kill_between_batches_is_repaired(
    store: Any, runner: IngestRunner, tmp_path: Any
) -> None:
    corpus = corpus_versions(tmp_path / SOURCE)
    settings = Settings()
    corpus.use("v1")
    completed(runner.run(corpus.source(SOURCE)))
    reference_v1 = index_objects(settings, SOURCE)
    corpus.use("v2")
    whole = runner.run(corpus.source(SOURCE))
    assert len(stage_spans(whole, "chunk")) == 1, "the default batch takes the whole update"
    completed(whole)
    reference_v2 = index_objects(settings, SOURCE)

    corpus.use("v1")
    batched = runner.run(corpus.source(SOURCE), env=TWO_PER_BATCH)
    report = completed(batched)
    assert index_differences(index_objects(settings, SOURCE), reference_v1) == []
    assert report["documents_new"] + report["documents_changed"] == 3, report
    for stage in WRITE_STAGES:
        spans = stage_spans(batched, stage)
        assert len(spans) == 2, (stage, spans)
        # each stage's figure in the report is the sum over the batches (a span also holds
        # the timeline's own writes, so it is a little longer than the timed block)
        assert sum(spans) - 0.05 <= report["stage_seconds"][stage] <= sum(spans) + 0.001

    corpus.use("v2")
    before = ledger_view(settings.ledger_database_url, SOURCE)
    killed = runner.run(corpus.source(SOURCE), env=TWO_PER_BATCH, kill={"at": "after:write"})
    assert killed.killed and killed.kill_site == "write/after:write", killed.events[-3:]
    assert len(stage_spans(killed, "chunk")) == 1, "killed after the first batch's write"
    after = ledger_view(settings.ledger_database_url, SOURCE)
    assert after.last_success_at == before.last_success_at, "the killed run moved the ledger"
    assert index_differences(index_objects(settings, SOURCE), reference_v2) != [], (
        "the second batch was never written"
    )
    rerun = runner.run(corpus.source(SOURCE), env=TWO_PER_BATCH)
    rewritten = completed(rerun)
    # the first batch's two documents were whole and stayed so: only the third is rewritten
    assert rewritten["documents_new"] + rewritten["documents_changed"] == 1, rewritten
    assert index_differences(index_objects(settings, SOURCE), reference_v2) == []
