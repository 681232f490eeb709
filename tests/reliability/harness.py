"""The fault-injection harness: a runner of real ingest processes that can be killed, a small
corpus in two versions, an exact comparison of the index with a clean run's, and the ledger
read directly."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from fixtures_files import shared_dir

from freshkb.core.config import Settings
from freshkb.core.records import SourceKind

RUNNER = Path(__file__).with_name("ingest_runner.py")

# Properties that say when and by which run an object was written: a rerun differs there.
RUN_PROPERTIES = frozenset({"ingested_at", "flow_run_id"})


# -- the runner of killable ingest processes ----------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    """How one forked run ended, and its timeline."""

    status: int  # exit code; minus the signal number when a signal ended it
    events: list[dict[str, Any]]
    seconds: float

    @property
    def killed(self) -> bool:
        """True when SIGKILL ended the run."""
        return self.status == -signal.SIGKILL

    @property
    def report(self) -> dict[str, Any] | None:
        """The run report, if the run lived to return it."""
        return next((e["report"] for e in self.events if e["event"] == "report"), None)

    @property
    def crash(self) -> dict[str, Any] | None:
        """The exception that escaped the run, if one did."""
        return next((e for e in self.events if e["event"] == "crash"), None)

    @property
    def kill_site(self) -> str | None:
        """Where the run killed itself (`stage/point`), None if it did not."""
        killed = next((e for e in self.events if e["event"] == "killed"), None)
        return None if killed is None else f"{killed['stage']}/{killed['where']}"

    def at(self, event: str) -> float | None:
        """Seconds from the fork to `event`, None if it did not happen."""
        return next((e["t"] for e in self.events if e["event"] == event), None)


class IngestRunner:
    """Talks to ingest_runner.py: one warm process that forks a killable run per request."""

    def __init__(self, env: dict[str, str], workdir: Path):
        self.workdir = workdir
        self.count = 0
        self.log = (workdir / "runner.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._answer(timeout=600)
        assert ready.get("ready"), ready

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the ingest runner said nothing for {timeout}s") from None
        if not line:
            tail = (self.workdir / "runner.log").read_text()[-3000:]
            raise AssertionError(f"the ingest runner exited: {tail}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def start(self, request: dict[str, Any]) -> tuple[int, Path]:
        """Fork one run; its pid and the file of its timeline."""
        self.count += 1
        result = self.workdir / f"run-{self.count:03d}.jsonl"
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({**request, "result": str(result)}) + "\n")
        self.process.stdin.flush()
        return int(self._answer(timeout=60)["pid"]), result

    def finish(self, pid: int, result: Path, started: float, timeout: float = 300) -> RunOutcome:
        """Wait for a forked run to end; one that hangs is killed and fails the test."""
        try:
            ended = self._answer(timeout=timeout)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            self._answer(timeout=60)
            raise AssertionError(
                f"run {result.name} hung for {timeout}s; last events: {read_events(result)[-6:]}"
            ) from None
        assert ended["pid"] == pid, ended
        return RunOutcome(int(ended["status"]), read_events(result), time.monotonic() - started)

    def run(
        self,
        source: dict[str, Any] | None = None,
        *,
        kill: dict[str, Any] | None = None,
        kill_after: float | None = None,
        write_batch: int = 200,
        env: dict[str, str] | None = None,
        cli: list[str] | None = None,
    ) -> RunOutcome:
        """One run to its end; `kill_after` seconds after the fork, SIGKILL from outside."""
        request: dict[str, Any] = {"kill": kill, "write_batch": write_batch, "env": env or {}}
        request |= {"cli": cli} if cli is not None else {"source": source}
        started = time.monotonic()
        pid, result = self.start(request)
        if kill_after is not None:
            time.sleep(max(0.0, kill_after - (time.monotonic() - started)))
            with contextlib.suppress(ProcessLookupError):  # it ended first: the outcome says
                os.kill(pid, signal.SIGKILL)
        return self.finish(pid, result, started)

    def close(self) -> None:
        """End the runner (it exits when its stdin closes)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()


def read_events(result: Path) -> list[dict[str, Any]]:
    """The timeline a forked run wrote (complete lines only: it may have died mid-line)."""
    if not result.exists():
        return []
    events = []
    for line in result.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def wait_for_event(result: Path, event: str, timeout: float = 120) -> None:
    """Block until a forked run has written `event` to its timeline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["event"] == event for e in read_events(result)):
            return
        time.sleep(0.02)
    raise AssertionError(f"the run never reached {event}: {read_events(result)[-5:]}")


# -- a small corpus in two versions -------------------------------------------------------

MANUALS = [f"product_info_{n}.md" for n in (1, 2, 3, 4, 5)]


@dataclass(frozen=True)
class CorpusVersions:
    """Two versions of a five-file source; switching between them edits, shortens, deletes
    and adds files (each switch deletes one of five files: under the 30% breaker)."""

    folder: Path
    versions: dict[str, dict[str, str]]

    def use(self, name: str) -> None:
        """Make the folder hold version `name`; files keep a fixed time per version."""
        wanted = self.versions[name]
        for path in self.folder.iterdir():
            if path.name not in wanted:
                path.unlink()
        stamp = {"v1": 1_767_225_600, "v2": 1_767_312_000}[name]
        for file_name, text in wanted.items():
            path = self.folder / file_name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                os.utime(path, (stamp, stamp))

    def source(self, name: str = "manuals") -> dict[str, Any]:
        """The inline config of the source."""
        return {"name": name, "kind": "documents", "location": str(self.folder), "owner": "tests"}


def corpus_versions(folder: Path, chars: int = 1500) -> CorpusVersions:
    """v1: the openings of five product manuals (1 to 3 chunks each, 10 in all). v2: the first
    cut from three chunks to one, the second edited, the fourth deleted, a short returns policy
    added, the others unchanged. Small on purpose: a run's cost is mostly per chunk."""
    policies = shared_dir() / "corpus" / "policies"

    def opening(path: Path, size: int = chars) -> str:
        text = path.read_text(encoding="utf-8")
        return text[: text.rfind("\n\n", 0, size)] + "\n"

    v1 = {name: opening(policies / "outdoor-manuals" / name) for name in MANUALS}
    v2 = dict(v1)
    v2["product_info_1.md"] = opening(policies / "outdoor-manuals" / "product_info_1.md", 400)
    v2["product_info_2.md"] = v1["product_info_2.md"].replace("the", "our", 3)
    del v2["product_info_4.md"]
    v2["returns.md"] = opening(policies / "service-policies" / "retail_policy.md", 600)
    folder.mkdir(parents=True, exist_ok=True)
    return CorpusVersions(folder, {"v1": v1, "v2": v2})


# -- the index as a comparable value ------------------------------------------------------


@dataclass(frozen=True)
class IndexObject:
    """One object of the index: what a rerun must reproduce exactly."""

    properties: dict[str, Any]
    vector: tuple[float, ...]


def index_objects(
    settings: Settings, source: str, kind: SourceKind = SourceKind.DOCUMENTS
) -> dict[str, IndexObject]:
    """Every object of `source` in the live collection of `kind`, by UUID (none: no collection)."""
    from freshkb.store.weaviate_store import open_store

    with open_store(settings) as store:
        name = store.live_collection(kind)
        if name is None:
            return {}
        base = store.client.collections.get(name)
        shards = (
            [base]
            if kind is SourceKind.DOCUMENTS
            else [base.with_tenant(t) for t in base.tenants.get()]
        )
        found: dict[str, IndexObject] = {}
        for shard in shards:
            for obj in shard.iterator(include_vector=True):
                if obj.properties.get("source") != source:
                    continue
                assert str(obj.uuid) not in found, f"{obj.uuid} listed twice"
                vector = obj.vector["default"] if isinstance(obj.vector, dict) else obj.vector
                properties = {k: v for k, v in obj.properties.items() if k not in RUN_PROPERTIES}
                found[str(obj.uuid)] = IndexObject(properties, tuple(vector))
    return found


def index_differences(got: dict[str, IndexObject], want: dict[str, IndexObject]) -> list[str]:
    """How `got` differs from `want`: missing, extra, duplicated, changed objects (empty: same)."""
    problems = [f"missing {uuid}" for uuid in sorted(want.keys() - got.keys())]
    problems += [f"extra {uuid}" for uuid in sorted(got.keys() - want.keys())]
    positions: dict[tuple[str, int], str] = {}
    for uuid, obj in got.items():
        spot = (obj.properties["document_id"], obj.properties["position"])
        if spot in positions:
            problems.append(f"duplicate chunk {spot}: {positions[spot]} and {uuid}")
        positions[spot] = uuid
    for uuid in sorted(want.keys() & got.keys()):
        if got[uuid].properties != want[uuid].properties:
            changed = {
                k
                for k in want[uuid].properties.keys() | got[uuid].properties.keys()
                if got[uuid].properties.get(k) != want[uuid].properties.get(k)
            }
            problems.append(f"{uuid}: properties differ: {sorted(changed)}")
        if not np.allclose(got[uuid].vector, want[uuid].vector, atol=1e-5):
            problems.append(f"{uuid}: vector differs")
    return problems


# -- the ledger, read directly ------------------------------------------------------------


@dataclass(frozen=True)
class LedgerView:
    """What the ledger says of one source: its last good sync and its runs."""

    last_success_at: Any
    last_success_flow_run_id: str | None
    last_status: str | None
    last_error: str | None
    runs: list[tuple[str | None, str]]  # (flow run id, status), oldest first


def ledger_view(url: str, source: str) -> LedgerView:
    """Read the ledger's row and runs of `source` without going through freshkb."""
    from freshkb.store.ledger import runs_table, sources_table

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            row = (
                connection.execute(sa.select(sources_table).where(sources_table.c.name == source))
                .mappings()
                .first()
            )
            runs = connection.execute(
                sa.select(runs_table.c.flow_run_id, runs_table.c.status)
                .where(runs_table.c.source == source)
                .order_by(runs_table.c.id)
            ).all()
    finally:
        engine.dispose()
    if row is None:
        return LedgerView(None, None, None, None, [])
    return LedgerView(
        row["last_success_at"],
        row["last_success_flow_run_id"],
        row["last_status"],
        row["last_error"],
        [(r[0], r[1]) for r in runs],
    )


def empty_index(settings: Settings) -> None:
    """Remove every collection and alias from the server."""
    from freshkb.store.connection import connect

    client = connect(settings)
    try:
        for alias in client.alias.list_all():
            client.alias.delete(alias_name=alias)
        client.collections.delete_all()
    finally:
        client.close()
