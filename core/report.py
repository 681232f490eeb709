"""The reports flows hand back: what one ingest or one rebuild did, as typed data, JSON and a
markdown table (for Prefect artifacts and terminals)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from freshkb.core.errors import FreshkbError
from freshkb.core.records import LoadResult, SyncPlan


@dataclass(frozen=True)
class ItemFailure:
    """A file or record that did not load, and why."""

    item: str
    reason: str


@dataclass(frozen=True)
class ObjectFailure:
    """An object the store refused, and why."""

    uuid: str
    reason: str


@dataclass(frozen=True)
class ValidationSummary:
    """The gate's verdict as the run report and the ledger keep it (GX's results stay in
    their JSON file)."""

    success: bool
    evaluated: int
    failed: int
    failures: tuple[str, ...] = ()
    results_file: str | None = None

    def line(self) -> str:
        """One line: passed/FAILED and how many expectations were met."""
        verdict = "passed" if self.success else "FAILED"
        return f"{verdict}: {self.evaluated - self.failed} of {self.evaluated} expectations met"


@dataclass
class RunReport:
    """Counts, failures and timings of one ingest of one source."""

    source: str
    kind: str
    flow_run_id: str | None = None
    status: str = "completed"  # completed | failed
    error: str | None = None
    documents_seen: int = 0
    documents_new: int = 0
    documents_changed: int = 0
    documents_unchanged: int = 0
    documents_reused: int = 0  # unchanged files not parsed again (their hash matched the index)
    documents_deleted: int = 0
    documents_failed: int = 0
    failures: list[ItemFailure] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_flagged: int = 0  # carry instructions aimed at an AI; kept out of answers
    embeddings_computed: int = 0
    embeddings_cached: int = 0
    passages_embedded: int = 0  # chunks' sentences embedded for search (embeddings/passages.py)
    objects_written: int = 0
    objects_deleted: int = 0
    objects_failed: list[ObjectFailure] = field(default_factory=list)
    objects_live: int | None = None  # counted after the writes (the post-write check)
    validation: ValidationSummary | None = None  # None: the gate did not run
    stage_seconds: dict[str, float] = field(default_factory=dict)
    newest_record_at: datetime | None = None  # customers: the newest record's update time

    @property
    def completed(self) -> bool:
        """True when the run passed its gate and its post-write check."""
        return self.status == "completed"

    @property
    def wrote_nothing(self) -> bool:
        """True when the run changed nothing in the store."""
        return self.objects_written == 0 and self.objects_deleted == 0

    def fail(self, exc: BaseException) -> None:
        """Mark the run failed; a freshkb error says what happened, anything else its type too."""
        self.status = "failed"
        self.error = str(exc) if isinstance(exc, FreshkbError) else f"{type(exc).__name__}: {exc}"

    def count_load(self, loaded: LoadResult) -> None:
        """Take the counts and failures of a load."""
        self.documents_reused = sum(1 for d in loaded.documents if d.metadata.get("reused"))
        self.documents_seen = len(loaded.documents) + len(loaded.failures)
        self.documents_failed = len(loaded.failures)
        self.failures = [ItemFailure(f.item, f.reason) for f in loaded.failures]

    def count_plan(self, plan: SyncPlan) -> None:
        """Take the counts of a sync plan."""
        self.documents_new = len(plan.new)
        self.documents_changed = len(plan.changed)
        self.documents_unchanged = len(plan.unchanged)
        self.documents_deleted = len(plan.deleted)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (what `--json` prints and the ledger stores)."""
        data = asdict(self)
        data["validation"] = data["validation"] or {}
        data["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        data["newest_record_at"] = (
            self.newest_record_at.isoformat() if self.newest_record_at else None
        )
        return data

    def markdown(self) -> str:
        """A markdown summary (for Prefect artifacts and terminals)."""
        lines = [f"### freshkb ingest `{self.source}`", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self._rows()]
        if self.validation and self.validation.failures:
            lines += ["", "| failed expectation |", "|---|"]
            lines += [f"| {text.replace('|', '/')} |" for text in self.validation.failures]
        if self.failures:
            lines += ["", "| failed item | reason |", "|---|---|"]
            lines += [f"| {f.item} | {f.reason.replace('|', '/')} |" for f in self.failures]
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, object]]:
        reused = f" ({self.documents_reused} not parsed again)" if self.documents_reused else ""
        return [
            ("status", self.status + (f": {self.error}" if self.error else "")),
            ("documents seen", self.documents_seen),
            (
                "new / changed / unchanged",
                f"{self.documents_new} / {self.documents_changed} / {self.documents_unchanged}"
                + reused,
            ),
            ("deleted", self.documents_deleted),
            ("failed", self.documents_failed),
            (
                "chunks embedded",
                f"{self.chunks_embedded} ({self.embeddings_computed} computed, "
                f"{self.embeddings_cached} from cache; {self.passages_embedded} passages)",
            ),
            ("objects written / deleted", f"{self.objects_written} / {self.objects_deleted}"),
            ("objects live after the run", "-" if self.objects_live is None else self.objects_live),
            ("validation", self.validation.line() if self.validation else "not run"),
            ("seconds", ", ".join(f"{k} {v:.1f}" for k, v in self.stage_seconds.items())),
        ]


@dataclass
class RebuildReport:
    """What one rebuild of a collection did: the version it built and whether it was promoted."""

    kind: str
    flow_run_id: str
    promoted: bool = False
    version: str | None = None
    model_id: str | None = None
    previous: str | None = None  # the version answers read before the switch
    dropped: list[str] = field(default_factory=list)  # failed builds removed first
    reports: list[RunReport] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        data = asdict(self)
        data["reports"] = [report.to_dict() for report in self.reports]
        return data
