"""SIGKILL an ingest at 20 random points, rerun it, and find the index a clean run leaves.

Each kill hits a real ingest process (forked by a warm runner, see ingest_runner.py) running
the real flow against the session's Weaviate, Prefect server and ledger. The points are drawn
from a measured clean run's timeline, five of each kind: at a stage boundary, at a random moment
inside a stage, during (or right after) a gRPC write batch, and from outside the process at a
random moment of the run. Runs alternate between two versions of a small corpus, so a killed
run is always an update: an edited, a shortened, a deleted and a new file.

The seed is printed; FRESHKB_KILL_SEED=<seed> replays the same points.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import pytest

from freshkb.core import ids
from freshkb.core.config import Settings

from .harness import (
    CorpusVersions,
    IndexObject,
    IngestRunner,
    RunOutcome,
    corpus_versions,
    index_differences,
    index_objects,
    ledger_view,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 20
WRITE_BATCH = 1  # a gRPC batch per object: several batches from a small corpus
SOURCE = "manuals"


@dataclass(frozen=True)
class KillPoint:
    """Where one run is killed: a point or timer inside it, or a SIGKILL from outside."""

    kind: str  # boundary | inside | batch | external
    kill: dict[str, Any] | None = None
    after: float | None = None  # seconds from the fork (external kills)

    def label(self) -> str:
        """Short description for the report."""
        if self.after is not None:
            return f"external@{self.after:.2f}s"
        assert self.kill is not None
        delay = self.kill.get("delay")
        return self.kill["at"] + (f"+{delay:.3f}s" if delay is not None else "")


def stage_spans(outcome: RunOutcome) -> dict[str, tuple[float, float]]:
    """(start, end) of each stage and each gRPC batch in a clean run's timeline."""
    starts: dict[str, float] = {}
    spans = {}
    for event in outcome.events:
        name = event["event"]
        if name.startswith("before:") or name.startswith("batch:"):
            starts[name.split(":", 1)[1] if name.startswith("before:") else name] = event["t"]
        elif name.startswith("after:") and name[6:] in starts:
            spans[name[6:]] = (starts[name[6:]], event["t"])
        elif name.startswith("after-batch:"):
            batch = "batch:" + name.split(":", 1)[1]
            spans[batch] = (starts[batch], event["t"])
    return spans


def draw_points(rng: random.Random, timelines: list[RunOutcome]) -> list[KillPoint]:
    """KILLS points, a quarter of each kind, drawn from the clean runs' timelines in turn."""
    kinds = ["boundary", "inside", "batch", "external"] * (KILLS // 4)
    rng.shuffle(kinds)
    points = []
    for number, kind in enumerate(kinds):
        clean = timelines[number % 2]
        spans = stage_spans(clean)
        stages = [s for s in spans if not s.startswith("batch:") and s != "record_result"]
        batches = [s for s in spans if s.startswith("batch:")]
        if kind == "boundary":
            edges = [
                e["event"] for e in clean.events if e["event"].startswith(("before:", "after"))
            ]
            edges = [e for e in edges if e != "after:record_result"]
            points.append(KillPoint(kind, {"at": rng.choice(edges)}))
        elif kind == "inside":
            stage = rng.choice(stages)
            start, end = spans[stage]
            points.append(
                KillPoint(kind, {"at": f"inside:{stage}", "delay": rng.uniform(0, end - start)})
            )
        elif kind == "batch" and rng.random() < 0.3:
            points.append(KillPoint(kind, {"at": "after-" + rng.choice(batches)}))
        elif kind == "batch":
            batch = rng.choice(batches)
            start, end = spans[batch]
            points.append(KillPoint(kind, {"at": batch, "delay": rng.uniform(0, end - start)}))
        else:
            # The killed run may be faster than the clean one it is timed against: stay
            # within the first three quarters of the quicker of the two clean runs.
            ends = [t.at("before:record_result") or 0.0 for t in timelines]
            assert min(ends) > 0
            points.append(KillPoint(kind, after=rng.uniform(0, 0.75 * min(ends))))
    return points


def clean_run(runner: IngestRunner, corpus: CorpusVersions, version: str) -> RunOutcome:
    """A run that is not killed."""
    corpus.use(version)
    outcome = runner.run(corpus.source(SOURCE), write_batch=WRITE_BATCH)
    assert outcome.status == 0, outcome.crash
    assert outcome.report and outcome.report["status"] == "completed", outcome.report
    return outcome


def kill_and_rerun(
    runner: IngestRunner,
    corpus: CorpusVersions,
    version: str,
    point: KillPoint,
    reference: dict[str, IndexObject],
) -> list[str]:
    """Kill a run towards `version` at `point`, rerun it; what is wrong afterwards (if any)."""
    settings = Settings()
    corpus.use(version)
    before = ledger_view(settings.ledger_database_url, SOURCE)
    killed = runner.run(
        corpus.source(SOURCE), kill=point.kill, kill_after=point.after, write_batch=WRITE_BATCH
    )
    retries = 0
    while point.after is not None and not killed.killed and killed.status == 0 and retries < 3:
        # The run finished before an outside kill's time came (a busy machine makes run
        # lengths vary): undo the run and kill the same change again, twice as early.
        retries += 1
        print(f"  external kill at {point.after:.2f}s came after the run ended; retrying earlier")
        clean_run(runner, corpus, "v1" if version == "v2" else "v2")
        point = KillPoint(point.kind, after=point.after / 2)
        corpus.use(version)
        before = ledger_view(settings.ledger_database_url, SOURCE)
        killed = runner.run(corpus.source(SOURCE), kill_after=point.after, write_batch=WRITE_BATCH)
    problems = []
    if not killed.killed:
        problems.append(f"the kill did not land: exit {killed.status}, {killed.crash}")
    after = ledger_view(settings.ledger_database_url, SOURCE)
    if (after.last_success_at, after.last_success_flow_run_id) != (
        before.last_success_at,
        before.last_success_flow_run_id,
    ):
        problems.append("the killed run moved the ledger's last successful sync")
    if any(status != "running" for _, status in after.runs[len(before.runs) :]):
        problems.append(f"the killed run was recorded as ended: {after.runs[len(before.runs) :]}")
    rerun = runner.run(corpus.source(SOURCE), write_batch=WRITE_BATCH)
    report = rerun.report or {}
    if report.get("status") != "completed":
        problems.append(f"the rerun did not complete: {report.get('error') or rerun.crash}")
    problems += index_differences(index_objects(settings, SOURCE), reference)[:5]
    print(
        f"  {point.kind:8} {point.label():32} landed {killed.kill_site or 'from outside'}"
        f" after {killed.seconds:.2f}s; rerun {rerun.seconds:.1f}s: "
        + ("converged" if not problems else "; ".join(problems))
    )
    return problems


@pytest.mark.timeout(900)
def test_sigkilled_ingest_reruns_to_the_clean_index_at_20_points(
    store: Any, runner: IngestRunner, tmp_path: Any
) -> None:
    seed = int(os.environ.get("FRESHKB_KILL_SEED") or random.SystemRandom().randrange(2**31))
    print(f"\nkill seed {seed} (replay with FRESHKB_KILL_SEED={seed})")
    corpus = corpus_versions(tmp_path / SOURCE)
    settings = Settings()

    first = clean_run(runner, corpus, "v1")
    references = {"v1": index_objects(settings, SOURCE)}
    up = clean_run(runner, corpus, "v2")
    references["v2"] = index_objects(settings, SOURCE)
    down = clean_run(runner, corpus, "v1")
    assert index_differences(index_objects(settings, SOURCE), references["v1"]) == [], (
        "an update back to v1 leaves what a first ingest of v1 left"
    )
    assert sum(1 for e in up.events if e["event"].startswith("batch:")) >= 4, "several batches"
    print(
        f"clean runs: first {first.seconds:.1f}s, v1->v2 {up.seconds:.1f}s, "
        f"v2->v1 {down.seconds:.1f}s; {len(references['v1'])} / {len(references['v2'])} objects"
    )

    points = draw_points(random.Random(seed), [up, down])
    failed = {}
    for number, point in enumerate(points):
        version = "v2" if number % 2 == 0 else "v1"
        problems = kill_and_rerun(runner, corpus, version, point, references[version])
        if problems:
            failed[point.label()] = problems
    survived = len(points) - len(failed)
    print(f"kills survived: {survived}/{len(points)} (seed {seed})")
    assert not failed, f"{survived}/{len(points)} kills survived (seed {seed}): {failed}"


def name_keeping_chunk_first(key: str, chunks: int) -> str:
    """A source name under which chunk 0 of document `key` sorts before its other chunks.

    The index is scanned in UUID order, so a shortened document whose write was cut before its
    tail was trimmed is then read with the new, shorter count first: the case a rerun used to
    leave as it was (its tail never trimmed, its post-write check failing on every rerun).
    """
    for number in range(1000):
        name = f"{SOURCE}-{number}"
        document = ids.document_id(name, key)
        first = ids.chunk_uuid(document, 0)
        if all(first < ids.chunk_uuid(document, n) for n in range(1, chunks)):
            return name
    raise AssertionError("no such name")


@pytest.mark.timeout(300)
def test_ingest_killed_before_trimming_a_shortened_document_is_repaired_by_the_rerun(
    store: Any, runner: IngestRunner, tmp_path: Any
) -> None:
    corpus = corpus_versions(tmp_path / SOURCE)
    name = name_keeping_chunk_first("product_info_1.md", chunks=3)
    corpus.use("v1")
    first = runner.run(corpus.source(name), write_batch=WRITE_BATCH)
    assert first.report and first.report["objects_written"] == 10, first.report
    corpus.use("v2")
    killed = runner.run(corpus.source(name), kill={"at": "before:trim"}, write_batch=WRITE_BATCH)
    assert killed.killed and killed.kill_site == "write/before:trim", killed.events[-3:]
    rerun = runner.run(corpus.source(name), write_batch=WRITE_BATCH)
    assert rerun.report is not None and rerun.report["status"] == "completed", rerun.report
    objects = [o.properties for o in index_objects(Settings(), name).values()]
    shortened = [p for p in objects if p["document_key"] == "product_info_1.md"]
    assert [(p["position"], p["chunk_count"]) for p in shortened] == [(0, 1)], shortened
    assert len(objects) == 6
    for document in {p["document_id"] for p in objects}:
        chunks = [p for p in objects if p["document_id"] == document]
        assert sorted(p["position"] for p in chunks) == list(range(chunks[0]["chunk_count"]))
        assert len({p["content_hash"] for p in chunks}) == 1
