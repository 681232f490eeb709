"""The run report an ingest returns, as data, JSON and a markdown table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    failures: list[dict[str, str]] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_flagged: int = 0  # carry instructions aimed at an AI; kept out of answers
    embeddings_computed: int = 0
    embeddings_cached: int = 0
    objects_written: int = 0
    objects_deleted: int = 0
    objects_failed: list[dict[str, str]] = field(default_factory=list)
    objects_live: int | None = None  # counted after the writes (the post-write check)
    validation: dict[str, Any] = field(default_factory=dict)  # Great Expectations summary
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        data = asdict(self)
        data["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        return data

    @property
    def wrote_nothing(self) -> bool:
        """True when the run changed nothing in the store."""
        return self.objects_written == 0 and self.objects_deleted == 0

    def markdown(self) -> str:
        """A markdown summary (for Prefect artifacts and terminals)."""
        rows = [
            ("status", self.status + (f": {self.error}" if self.error else "")),
            ("documents seen", self.documents_seen),
            (
                "new / changed / unchanged",
                f"{self.documents_new} / {self.documents_changed} / {self.documents_unchanged}"
                + (f" ({self.documents_reused} not parsed again)" if self.documents_reused else ""),
            ),
            ("deleted", self.documents_deleted),
            ("failed", self.documents_failed),
            (
                "chunks embedded",
                f"{self.chunks_embedded} ({self.embeddings_computed} computed, "
                f"{self.embeddings_cached} from cache)",
            ),
            ("objects written / deleted", f"{self.objects_written} / {self.objects_deleted}"),
            ("objects live after the run", "-" if self.objects_live is None else self.objects_live),
            ("validation", _validation_line(self.validation)),
            ("seconds", ", ".join(f"{k} {v:.1f}" for k, v in self.stage_seconds.items())),
        ]
        lines = [f"### freshkb ingest `{self.source}`", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        if self.validation.get("failures"):
            lines += ["", "| failed expectation |", "|---|"]
            lines += [f"| {text.replace('|', '/')} |" for text in self.validation["failures"]]
        if self.failures:
            lines += ["", "| failed item | reason |", "|---|---|"]
            lines += [f"| {f['item']} | {f['reason'].replace('|', '/')} |" for f in self.failures]
        return "\n".join(lines)


def _validation_line(validation: dict[str, Any]) -> str:
    if not validation:
        return "not run"
    passed = validation["evaluated"] - validation["failed"]
    verdict = "passed" if validation["success"] else "FAILED"
    return f"{verdict}: {passed} of {validation['evaluated']} expectations met"
