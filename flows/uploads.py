"""Runs of a source after uploads: check the waiting documents, run the source's ingest flow,
then record what became of each upload.

`trigger_source_run` is the one way an upload starts its source's flow. It runs in a background
thread of this process; runs of one source never overlap: one runs, at most one waits, and a
run already waiting absorbs further uploads (it has not read the folder yet). A lock file in
the data directory serializes the runs of one source across processes too (the API server and
a `freshkb upload` from a shell).
"""

from __future__ import annotations

import fcntl
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from freshkb.core import ids
from freshkb.core.config import Settings
from freshkb.core.records import LoadResult, SourceKind, StoredDocument
from freshkb.core.sources import AnySource, DocumentSourceConfig, get_source
from freshkb.loaders.documents import DocumentFolderLoader
from freshkb.loaders.landing import landing_folder
from freshkb.store.active_config import active_settings
from freshkb.store.ledger import Ledger
from freshkb.store.uploads import DocumentState, UploadedDocument, UploadRegister
from freshkb.store.weaviate_store import open_store

log = logging.getLogger(__name__)
RunState = Literal["idle", "running", "queued"]
WAITING: tuple[Literal["pending", "validated"], ...] = ("pending", "validated")


@dataclass(frozen=True)
class RunTicket:
    """What a trigger did: started a run, queued one behind the running one, or joined the
    run already waiting."""

    source: str
    outcome: Literal["started", "queued", "absorbed"]


@dataclass
class _SourceRuns:
    """One source's runs in this process: the one running and whether another waits."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    run_lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    waiting: bool = False
    allow_mass_delete: bool = False


_sources: dict[str, _SourceRuns] = {}
_sources_guard = threading.Lock()


def _runs_of(source_name: str) -> _SourceRuns:
    with _sources_guard:
        return _sources.setdefault(source_name, _SourceRuns())


def trigger_source_run(
    source_name: str, settings: Settings, allow_mass_delete: bool = False
) -> RunTicket:
    """Run the source's flow in the background, after any run of it in progress."""
    runs = _runs_of(source_name)
    with runs.guard:
        runs.allow_mass_delete |= allow_mass_delete
        if runs.waiting:
            return RunTicket(source_name, "absorbed")
        runs.waiting = True
        outcome: Literal["started", "queued"] = "queued" if runs.running else "started"
    worker = threading.Thread(
        target=_run_when_free,
        args=(runs, source_name, settings),
        name=f"freshkb-run-{source_name}",
        daemon=True,
    )
    worker.start()
    return RunTicket(source_name, outcome)


def run_state(source_name: str) -> RunState:
    """Whether this process runs the source now, has a run waiting, or neither."""
    runs = _runs_of(source_name)
    with runs.guard:
        if runs.waiting:
            return "queued"
        return "running" if runs.running else "idle"


def _run_when_free(runs: _SourceRuns, source_name: str, settings: Settings) -> None:
    with runs.run_lock:
        with runs.guard:
            runs.waiting, runs.running = False, True
            allow, runs.allow_mass_delete = runs.allow_mass_delete, False
        try:
            run_uploaded_source(source_name, settings, allow)
        except Exception:  # a background run has nobody to raise to; the register says why
            log.exception("upload run of %s failed", source_name)
        finally:
            with runs.guard:
                runs.running = False


def start_detached_run(source_name: str, settings: Settings) -> tuple[int, Path]:
    """Run the source's flow in a process of its own that outlives the caller (the CLI);
    returns its pid and log file."""
    log_file = settings.data_dir / "uploads" / f"{source_name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "freshkb.flows.uploads", source_name]
    command += ["--config", str(settings.config_file)]
    with log_file.open("ab") as output:
        child = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    return child.pid, log_file


@contextmanager
def source_lock(settings: Settings, source_name: str) -> Iterator[None]:
    """Hold the source's run lock file (waits while another process runs the source)."""
    path = settings.data_dir / "locks" / f"source-{source_name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_uploaded_source(
    source_name: str, settings: Settings, allow_mass_delete: bool = False
) -> dict[str, Any]:
    """Check the source's waiting uploads, run its ingest flow, record each upload's outcome;
    returns the run report (as the ledger records it)."""
    source = get_source(source_name, settings.config_file)
    register = UploadRegister(settings.ledger_database_url)
    try:
        with source_lock(settings, source_name):
            waiting = register.documents(source_name, WAITING)
            pages = validate_uploads(source, waiting, register)
            report = ingest_report(source, settings, allow_mass_delete)
            checked = [doc for doc in waiting if doc.name in pages]
            record_outcomes(source, settings, register, checked, pages, report)
    finally:
        register.close()
    return report


def validate_uploads(
    source: AnySource, waiting: list[UploadedDocument], register: UploadRegister
) -> dict[str, int | None]:
    """Parse each waiting upload as the run will: validated (name -> pages) or failed."""
    if not waiting or not isinstance(source, DocumentSourceConfig):
        return {}
    folder = landing_folder(source)
    present = [doc for doc in waiting if (folder / doc.name).is_file()]
    for gone in set(waiting) - set(present):
        register.forget(source.name, gone.name)
    only = source.model_copy(update={"include": [_literal_glob(doc.name) for doc in present]})
    loaded = DocumentFolderLoader(only).load() if present else LoadResult(())
    failures = {failure.item: failure.reason for failure in loaded.failures}
    validated: dict[str, int | None] = {}
    for doc in present:
        if doc.name in failures:
            register.mark(
                source.name, doc.name, doc.content_hash, "failed", reason=failures[doc.name]
            )
            continue
        found = [d for d in loaded.documents if ids.comes_from(d.key, doc.name)]
        page_counts = [int(d.metadata["page_count"]) for d in found if "page_count" in d.metadata]
        validated[doc.name] = max(page_counts) if page_counts else None
        register.mark(
            source.name, doc.name, doc.content_hash, "validated", pages=validated[doc.name]
        )
    return validated


def _literal_glob(name: str) -> str:
    """A glob matching exactly `name` (fnmatch reads [, * and ? as patterns)."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def ingest_report(source: AnySource, settings: Settings, allow_mass_delete: bool) -> dict[str, Any]:
    """Run the source's ingest flow; its report, also when the flow raised on failure."""
    from freshkb.flows.deployed import source_slot
    from freshkb.flows.ingest import ingest_source

    try:
        # Against a Prefect server, the source's one slot: never beside a scheduled run of it.
        with source_slot(source.name):
            report = ingest_source(
                source.name,
                config_file=str(settings.config_file),
                allow_mass_delete=allow_mass_delete,
            )
        return report.to_dict()
    except Exception as exc:
        ledger = Ledger(settings.ledger_database_url)
        try:
            latest = ledger.runs(source.name, 1)
        finally:
            ledger.close()
        if latest and latest[0].status != "running" and latest[0].report:
            return latest[0].report
        return {"source": source.name, "status": "failed", "error": str(exc), "failures": []}


def record_outcomes(
    source: AnySource,
    settings: Settings,
    register: UploadRegister,
    checked: list[UploadedDocument],
    pages: dict[str, int | None],
    report: dict[str, Any],
) -> None:
    """Ingested (with its chunk count) or failed (with why) for each upload the run checked."""
    if not checked:
        return
    failures = {item["item"]: item["reason"] for item in report.get("failures", [])}
    stored: list[StoredDocument] = []
    if report.get("status") == "completed":
        with open_store(settings) as store:
            stored = list(store.stored_documents(source.name, SourceKind.DOCUMENTS).values())
    for doc in checked:
        state, why, chunks = _outcome(doc.name, report, failures, stored)
        register.mark(
            source.name,
            doc.name,
            doc.content_hash,
            state,
            reason=why,
            chunks=chunks,
            pages=pages[doc.name],
            flow_run_id=report.get("flow_run_id"),
        )


def _outcome(
    name: str, report: dict[str, Any], failures: dict[str, str], stored: list[StoredDocument]
) -> tuple[DocumentState, str | None, int | None]:
    """(state, reason, chunks) of one upload after the run that `report` describes."""
    if name in failures:
        return "failed", failures[name], None
    if report.get("status") != "completed":
        return "failed", f"the run of the source failed: {report.get('error')}", None
    held = [doc for doc in stored if ids.comes_from(doc.key, name)]
    if held and all(doc.complete for doc in held):
        return "ingested", None, sum(doc.chunk_count for doc in held)
    return "failed", "not in the index after the run; upload it again", None


def main(argv: list[str]) -> int:
    """`python -m freshkb.flows.uploads SOURCE [--config FILE]`: one run, as the CLI detaches it."""
    source_name = argv[0]
    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    settings = active_settings(Settings(config_file=Path(config)) if config else Settings())
    report = run_uploaded_source(source_name, settings)
    return 0 if report.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
