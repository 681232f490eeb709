"""A process that forks real ingest runs and lets them be SIGKILLed at chosen points.

Started once per test module as `python ingest_runner.py`: it imports freshkb and loads the
embedding model and the injection guard (about a minute on a busy 2-core machine), then forks
one child per request, so each run is a real, separate process that starts in milliseconds.
The child runs the real `ingest_source` flow (against the test session's Prefect server) and
can kill itself with SIGKILL at a named point of its timeline; a SIGKILL from the test itself
(by the pid this process reports) needs no point at all.

Requests arrive on stdin and answers leave on stdout, one JSON object a line:

    -> {"source": {...inline source...} | "cli": [args], "result": "/path/run.jsonl",
        "kill": {...} | null, "write_batch": 8, "env": {...}}
    <- {"pid": 1234}                     as soon as the child runs
    <- {"pid": 1234, "status": -9}       when it has ended: its exit code, minus the signal

The child appends its timeline to the result file as it goes (one JSON event a line: stage
entered and left, each gRPC batch sent and answered, the ledger's two writes, where a kill
fired) and, if it lives to the end, the run report (or the CLI's exit code); its stdout and
stderr go to the result file's path plus .out and .err.

Kill points ("kill": {"at": ..., "delay": seconds}; without a delay it dies at the point,
with "action": "stop" it stops there with SIGSTOP until the test sends SIGCONT):
  before:<stage> / after:<stage>   at the boundary of a stage of flows/ingest.py run_stages
  inside:<stage>                   `delay` seconds after the stage starts, from a timer thread
  batch:<n>                        `delay` seconds after gRPC batch n (from 1) is sent
  after-batch:<n>                  as soon as batch n has been answered
  before:trim                      every batch written, a shortened document's tail not yet cut
  after:record_attempt             the ledger holds the run as running, nothing done yet
  before:record_result             every write and the post-write check done, the ledger not told
A timer that has not fired by `before:record_result` fires there: every planned kill lands
before the run could be recorded as completed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# One intra-op thread: a forked child must not inherit a half-made OpenMP pool, and the
# machine has two cores to share anyway.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _signal_here(signum: int) -> None:
    """Stop or kill this process before the calling thread runs another line.

    Sent to the thread itself, not the process: a signal sent to the process is taken by
    whichever thread the kernel picks, and until that one runs, the caller goes on (measured:
    a batch stopped at `batch:2` with os.kill still sent it to Weaviate, which sometimes
    answered before the test killed it). A stop or a kill still ends every thread.
    """
    signal.pthread_kill(threading.get_ident(), signum)


class Timeline:
    """The child's record of where it is; also what decides when to die."""

    def __init__(self, path: Path, kill: dict[str, Any] | None):
        self.path = path
        self.kill = kill or {}
        self.started = time.monotonic()
        self.stage = "start"
        self.batches = 0
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()

    def event(self, name: str, **fields: Any) -> None:
        """Append one event, flushed at once (the process may die on the next line)."""
        line = {"event": name, "t": round(time.monotonic() - self.started, 4), **fields}
        with self.lock, self.path.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def die(self, where: str) -> None:
        """SIGKILL this process, after noting where."""
        self.event("killed", at=self.kill.get("at"), where=where, stage=self.stage)
        _signal_here(signal.SIGKILL)

    def point(self, name: str) -> None:
        """A named point of the run: note it; stop or die here if that is the plan."""
        self.event(name, stage=self.stage)
        if self.kill.get("at") != name:
            return
        if self.kill.get("action") == "stop":
            self.event("stopped", at=name)
            _signal_here(signal.SIGSTOP)  # the test acts, then sends SIGCONT
            self.event("continued", at=name)
        elif self.kill.get("delay") is None:
            self.die(name)

    def arm(self, trigger: str) -> None:
        """Start the planned timer if it belongs to `trigger`."""
        if self.kill.get("at") != trigger or self.kill.get("delay") is None or self.timer:
            return
        self.timer = threading.Timer(
            float(self.kill.get("delay", 0.0)), lambda: self.die(f"{trigger}+timer")
        )
        self.timer.daemon = True
        self.timer.start()

    def last_chance(self) -> None:
        """A timer still pending when the ledger is about to be told: fire it now."""
        if self.timer is not None and self.timer.is_alive():
            self.timer.cancel()
            self.die(f"{self.kill.get('at')}+late")


def instrument(timeline: Timeline, write_batch: int) -> None:
    """Wrap the stage timer, the gRPC batch write and the ledger writes of this process."""
    from freshkb.flows import ingest
    from freshkb.store import writes
    from freshkb.store.ledger import Ledger

    original_timed = ingest.timed

    @contextmanager
    def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
        timeline.stage = stage
        timeline.point(f"before:{stage}")
        timeline.arm(f"inside:{stage}")
        with original_timed(timings, stage):
            yield
        timeline.point(f"after:{stage}")

    ingest.timed = timed  # type: ignore[assignment]

    writes.WRITE_BATCH = write_batch
    original_insert = writes._insert

    def insert(*args: Any, **kwargs: Any) -> int:
        with timeline.lock:  # batches are written from two threads at once
            timeline.batches += 1
            number = timeline.batches
        timeline.point(f"batch:{number}")
        timeline.arm(f"batch:{number}")
        written = original_insert(*args, **kwargs)
        timeline.point(f"after-batch:{number}")
        return written

    writes._insert = insert  # type: ignore[assignment]
    original_trim = writes.delete_positions_from

    def trim(*args: Any, **kwargs: Any) -> int:
        timeline.point("before:trim")
        return original_trim(*args, **kwargs)

    writes.delete_positions_from = trim  # type: ignore[assignment]

    def around(name: str, before: str | None, after: str | None) -> None:
        original: Callable[..., Any] = getattr(Ledger, name)

        def wrapped(self: Ledger, *args: Any, **kwargs: Any) -> Any:
            if before:
                timeline.last_chance()
                timeline.point(before)
            result = original(self, *args, **kwargs)
            if after:
                timeline.point(after)
            return result

        setattr(Ledger, name, wrapped)

    around("record_attempt", None, "after:record_attempt")
    around("record_result", "before:record_result", "after:record_result")


def child(request: dict[str, Any]) -> None:
    """The forked run: instrument, ingest (or run the CLI), write the outcome; never returns."""
    result = Path(request["result"])
    for fd, suffix in ((1, ".out"), (2, ".err")):  # stdout is the runner's answer channel
        os.dup2(os.open(f"{result}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.environ.update(request.get("env") or {})
    code = 0
    try:
        timeline = Timeline(result, request.get("kill"))
        instrument(timeline, int(request.get("write_batch", 200)))
        timeline.event("flow")
        if "cli" in request:
            code = run_cli(request["cli"])
            timeline.event("exit", code=code)
        else:
            from freshkb.flows.ingest import ingest_source

            report = ingest_source(source_config=request["source"])
            timeline.event("report", report=report.to_dict())
    except BaseException as exc:
        code = 3
        with result.open("a") as out:
            crash = {"event": "crash", "type": type(exc).__name__, "message": str(exc)}
            out.write(json.dumps(crash | {"traceback": traceback.format_exc()}) + "\n")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_cli(args: list[str]) -> int:
    """`freshkb ARGS` in this process; its exit code."""
    from freshkb.cli.app import app

    try:
        app(args=args, prog_name="freshkb")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def warm_up() -> None:
    """Import, load and run once everything a run needs, before any fork: a child then starts
    with warm modules and models (the flow itself is never run here: Prefect starts threads)."""
    import tempfile

    from freshkb.cli import app  # noqa: F401  (the CLI)
    from freshkb.core.config import Settings
    from freshkb.core.sources import parse_source
    from freshkb.embeddings.chunking import ChunkingPolicy, chunk_documents
    from freshkb.embeddings.embedder import settings_for_index
    from freshkb.flows import ingest  # noqa: F401  (Prefect, GX, weaviate)
    from freshkb.flows.tasks import embedder_for, embedding_model
    from freshkb.loaders import loader_for
    from freshkb.screening import load_guard
    from freshkb.validation.gate import validate_load

    settings = settings_for_index(Settings(), None)  # the model a first ingest loads: int8
    model = embedding_model(settings)
    guard = load_guard(cache_dir=settings.cache_dir)
    with tempfile.TemporaryDirectory() as folder:
        text = "# Warm-up\n\n## Returns\n\nUnworn boots can be returned within 60 days.\n"
        Path(folder, "warm-up.md").write_text(text)
        source = parse_source(
            {"name": "warm-up", "kind": "documents", "location": folder, "owner": "tests"}
        )
        loaded = loader_for(source).load()
        validate_load(source, loaded, results_dir=Path(folder), run_id="warm-up")
        policy = ChunkingPolicy.for_window(model.max_tokens, settings.chunk_max_chars)
        chunks = chunk_documents(loaded.documents, policy)
        guard.inspect_documents([chunk.text for chunk in chunks])
        embedder_for(settings).embed([chunk.text for chunk in chunks])


def main() -> None:
    """Serve fork requests from stdin until it closes."""
    warm_up()
    print(json.dumps({"ready": True, "threads": threading.active_count()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
