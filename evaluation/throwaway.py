"""Where an evaluation runs: the answer path over an index of its own, built from the corpus
the cases need in a throw-away data directory and a Weaviate on ports of its own, so the live
index and ledger are never touched.

The sources: each corpus folder holding a file a QA truth cites (all its files of the cited
types), each folder of `also_index` (`freshkb eval --also-index`: all its document files), and,
for indirect-injection cases, one source of e-mails each carrying a hidden instruction. A kept
`index_dir` is reused across runs: unchanged files are not embedded again.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, DataError
from freshkb.core.report import RunReport
from freshkb.evaluation.cases import CaseSet
from freshkb.loaders.base import visible_files
from freshkb.loaders.documents import BINARY_FORMATS, TEXT_FORMATS
from freshkb.serving.runtime import Runtime, build_runtime

EMAIL_SOURCE = "eval-emails"
Progress = Callable[[str, int, int], None]
# What the flows read through Settings(): pointed at the throw-away index while it is built.
_ENV_KEYS = (
    "FRESHKB_DATA_DIR",
    "FRESHKB_WEAVIATE_HTTP_PORT",
    "FRESHKB_WEAVIATE_GRPC_PORT",
    "FRESHKB_EMBEDDING_MODEL",
    "FRESHKB_LEDGER_URL",
    "WEAVIATE_URL",
    "WEAVIATE_GRPC_URL",
    "WEAVIATE_API_KEY",
)


@dataclass(frozen=True)
class IndexPlan:
    """Where the evaluation index lives and what goes into it."""

    data_dir: Path
    http_port: int
    grpc_port: int
    sources: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class BuiltIndex:
    """The settings that read the evaluation index, and each source's ingest report."""

    settings: Settings
    reports: tuple[RunReport, ...]

    def report(self, source: str) -> RunReport | None:
        """The ingest report of one source, if it was ingested."""
        return next((r for r in self.reports if r.source == source), None)


def source_name(folder: Path) -> str:
    """A source name from a corpus folder's name ([a-z0-9_-])."""
    return re.sub(r"[^a-z0-9_-]+", "-", folder.name.lower()).strip("-_") or "corpus"


def plan_index(
    cases: CaseSet,
    corpus: Path,
    data_dir: Path,
    ports: tuple[int, int],
    also: tuple[Path, ...] = (),
) -> IndexPlan:
    """The sources the cases need, and the document folders `also` names; a ConfigError naming
    a cited file the corpus lacks, or a folder that holds no document freshkb reads."""
    if cases.qa and not corpus.is_dir():
        raise ConfigError(
            f"{corpus}: no such corpus folder; pass --corpus with the folder the cases cite "
            "(default ../shared/corpus)"
        )
    folders: dict[Path, set[str]] = {}
    for name in sorted(ref.file for case in cases.qa for ref in case.pages):
        found = sorted(corpus.rglob(name)) if corpus.is_dir() else []
        if not found:
            raise ConfigError(
                f"{corpus}: no file {name}, which a QA case cites; pass the --corpus that holds it"
            )
        folders.setdefault(found[0].parent.resolve(), set()).add(f"*{found[0].suffix}")
    for folder in also:
        folders.setdefault(folder.resolve(), set()).update(_document_globs(folder))
    _check_distinct_names(folders)
    sources = [
        {
            "name": source_name(folder),
            "kind": "documents",
            "location": str(folder),
            "owner": "freshkb-eval",
            "include": sorted(globs),
        }
        for folder, globs in sorted(folders.items())
    ]
    if cases.indirect:
        sources.append(
            {
                "name": EMAIL_SOURCE,
                "kind": "documents",
                "location": str(data_dir / "emails"),
                "owner": "freshkb-eval",
                "include": ["*.txt"],
            }
        )
    _check_staleness_sources(cases, {str(s["name"]) for s in sources})
    return IndexPlan(data_dir, ports[0], ports[1], tuple(sources))


def _document_globs(folder: Path) -> set[str]:
    """One pattern per document type found in `folder` or below it (hidden files aside, as the
    loader skips them), so files of other types (a LICENSE) are not ingested."""
    readable = {*TEXT_FORMATS, *BINARY_FORMATS}
    files = visible_files(folder) if folder.is_dir() else iter(())
    suffixes = {path.suffix for path in files if path.suffix.lower() in readable}
    if not suffixes:
        raise ConfigError(
            f"{folder}: not a folder of documents freshkb reads ({', '.join(sorted(readable))}); "
            "pass --also-index a folder of policy documents"
        )
    return {f"*{suffix}" for suffix in suffixes}


def _check_distinct_names(folders: dict[Path, set[str]]) -> None:
    """Each folder becomes a source named after it: two of one name would be one source, the
    second ingest deleting the first one's documents as gone."""
    named: dict[str, Path] = {}
    for folder in sorted(folders):
        other = named.setdefault(source_name(folder), folder)
        if other != folder:
            raise ConfigError(
                f"{other} and {folder} would both be indexed as source {source_name(folder)!r}; "
                "index one of them, or rename one folder"
            )


def _check_staleness_sources(cases: CaseSet, names: set[str]) -> None:
    for case in cases.staleness:
        if case.source not in names:
            raise ConfigError(
                f"staleness case {case.id} names source {case.source!r}, which the evaluation "
                f"index does not hold (it holds: {', '.join(sorted(names)) or 'nothing'}); name "
                "a corpus folder a QA case cites"
            )


def index_settings(settings: Settings, plan: IndexPlan) -> Settings:
    """The settings of the answer path, pointed at the evaluation index and its ledger."""
    return settings.model_copy(
        update={
            "data_dir": plan.data_dir,
            "weaviate_http_port": plan.http_port,
            "weaviate_grpc_port": plan.grpc_port,
            "weaviate_url": None,
            "weaviate_grpc_url": None,
            "weaviate_api_key": None,
            "ledger_url": f"sqlite:///{plan.data_dir / 'ledger.sqlite3'}",
        }
    )


@contextmanager
def evaluation_index(
    plan: IndexPlan, cases: CaseSet, settings: Settings, progress: Progress
) -> Iterator[BuiltIndex]:
    """Start the evaluation Weaviate, ingest the plan's sources, yield; stop it afterwards."""
    from freshkb.store import server

    ours = index_settings(settings, plan)
    _write_emails(plan.data_dir / "emails", cases)
    with _environment(ours):
        server.up(ours)
        try:
            yield BuiltIndex(ours, _ingest(plan, progress))
        finally:
            server.down(ours)


def _ingest(plan: IndexPlan, progress: Progress) -> tuple[RunReport, ...]:
    """Ingest every source of the plan; a DataError naming the source whose run failed."""
    from freshkb.flows.ingest import ingest_source

    reports = []
    for done, source in enumerate(plan.sources):
        progress(f"ingesting {source['name']}", done, len(plan.sources))
        # The index is the evaluation's own: a run with fewer cases may drop most e-mails.
        report = ingest_source(source_config=source, allow_mass_delete=True)
        if not report.completed:
            raise DataError(
                f"evaluation index: ingest of {source['location']} failed: {report.error}"
            )
        reports.append(report)
    progress("ingested", len(plan.sources), len(plan.sources))
    return tuple(reports)


def _write_emails(folder: Path, cases: CaseSet) -> None:
    """One file per indirect case: its e-mail with the instruction planted in it."""
    if not cases.indirect:
        return
    folder.mkdir(parents=True, exist_ok=True)
    keep = {case.document_name for case in cases.indirect}
    for stale in folder.glob("*.txt"):
        if stale.name not in keep:
            stale.unlink()
    for case in cases.indirect:
        path = folder / case.document_name
        text = case.tainted_text()
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")


@contextmanager
def _environment(settings: Settings) -> Iterator[None]:
    """The environment the ingest flows read their Settings() from, restored afterwards."""
    saved = {key: os.environ.get(key) for key in _ENV_KEYS}
    for key in ("WEAVIATE_URL", "WEAVIATE_GRPC_URL", "WEAVIATE_API_KEY"):
        os.environ.pop(key, None)
    os.environ.update(
        {
            "FRESHKB_DATA_DIR": str(settings.data_dir),
            "FRESHKB_WEAVIATE_HTTP_PORT": str(settings.weaviate_http_port),
            "FRESHKB_WEAVIATE_GRPC_PORT": str(settings.weaviate_grpc_port),
            "FRESHKB_EMBEDDING_MODEL": settings.embedding_model,
            "FRESHKB_LEDGER_URL": settings.ledger_database_url,
        }
    )
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def planted_state(settings: Settings, source: dict[str, Any], state: str) -> Iterator[None]:
    """The source `stale` (last success a day ago, SLA one minute) or `failed` (its last run
    failed) in the evaluation ledger; fresh again afterwards."""
    from freshkb.core.sources import parse_source
    from freshkb.store.ledger import Ledger

    now = datetime.now(UTC)
    ledger = Ledger(settings.ledger_database_url)
    try:
        if state == "stale":
            config = parse_source({**source, "freshness": {"max_age": "1m"}})
            run = ledger.record_attempt(config, "eval-staleness", now - timedelta(days=1))
            report = RunReport(source=config.name, kind="documents", flow_run_id="eval-staleness")
            ledger.record_result(run, report, now - timedelta(days=1))
        else:
            config = parse_source(source)
            run = ledger.record_attempt(config, "eval-staleness", now)
            report = RunReport(source=config.name, kind="documents", flow_run_id="eval-staleness")
            report.fail(DataError("planted by freshkb eval: a failing run"))
            ledger.record_result(run, report, now)
        yield
    finally:
        config = parse_source(source)
        run = ledger.record_attempt(config, "eval-restore", datetime.now(UTC))
        restored = RunReport(source=config.name, kind="documents", flow_run_id="eval-restore")
        ledger.record_result(run, restored, datetime.now(UTC))
        ledger.close()


@contextmanager
def index_dir(kept: Path | None) -> Iterator[Path]:
    """The index's data directory: `kept` (reused by later runs), else a temporary one."""
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
        yield kept.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="freshkb-eval-") as work:
        yield Path(work)


def default_corpus() -> Path:
    """../shared/corpus beside the repository (or beside the working directory)."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = root.parent / "shared" / "corpus"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "corpus"


@contextmanager
def answer_path(settings: Settings, llm_off: bool, live_scratch: Path | None) -> Iterator[Runtime]:
    """The real answer service. On the live index (`live_scratch` given) escalations go to a
    scratch database and nothing is logged: an evaluation must not fill the live queue."""
    from freshkb.serving.escalations import EscalationStore

    runtime = build_runtime(settings)
    if live_scratch is not None:
        runtime.service.escalations.close()
        url = f"sqlite:///{live_scratch / 'escalations.sqlite3'}"
        runtime.service.escalations = EscalationStore(url)
        if runtime.service.journal is not None:
            runtime.service.journal.close()
            runtime.service.journal = None
    if llm_off:  # open: no case waits on a dead endpoint
        for _ in range(settings.llm_breaker_failures):
            runtime.answerer.breaker.record(False)
    try:
        yield runtime
    finally:
        runtime.close()
