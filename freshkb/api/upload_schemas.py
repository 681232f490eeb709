"""What the upload routes give, as pydantic models (the OpenAPI page documents them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from freshkb.core.config import Settings
from freshkb.core.sources import DocumentSourceConfig
from freshkb.loaders.landing import ACCEPTED
from freshkb.store.ledger import IngestRun
from freshkb.store.uploads import UploadedDocument
from freshkb.validation.freshness import SourceFreshness

RunState = Literal["idle", "running", "queued"]
TriggerOutcome = Literal["started", "queued", "absorbed"]


class DocumentStatus(BaseModel):
    """One document of a source and how far it got."""

    name: str
    state: Literal["pending", "validated", "ingested", "failed"]
    reason: str | None = Field(description="why it failed, or what it waits for")
    content_hash: str | None = Field(description="sha-256 of the file (None: placed by hand)")
    size_bytes: int
    pages: int | None
    chunks: int | None = Field(description="chunks in the index once ingested")
    uploaded_by: str | None = Field(description="scope:token-fingerprint, cli:user, or None")
    uploaded_at: str | None
    updated_at: str | None
    last_run: str | None = Field(description="flow run that decided the state")

    @classmethod
    def of(cls, doc: UploadedDocument) -> DocumentStatus:
        """The API's form of a register entry."""
        data = doc.to_dict()
        data["last_run"] = data.pop("flow_run_id")
        return cls.model_validate(data)


class RunSummary(BaseModel):
    """A source's last finished run, and its report as the ledger keeps it."""

    flow_run_id: str | None
    status: str
    started_at: str
    finished_at: str | None
    error: str | None
    report: dict[str, Any] = Field(description="the run report: counts, failures, validation")

    @classmethod
    def of(cls, run: IngestRun) -> RunSummary:
        """The API's form of a ledger run."""
        return cls(
            flow_run_id=run.flow_run_id,
            status=run.status,
            started_at=run.started_at.isoformat(),
            finished_at=run.finished_at.isoformat() if run.finished_at else None,
            error=run.error,
            report=run.report,
        )


class SourceDocuments(BaseModel):
    """A source's documents, whether a run is going, and its last finished run."""

    source: str
    run: RunState
    last_run: RunSummary | None
    documents: list[DocumentStatus]


class UploadSource(BaseModel):
    """A documents source a token may upload to."""

    name: str
    owner: str
    description: str
    accepts: list[str]
    max_bytes: int
    run: RunState
    state: str = Field(description="freshness: fresh, stale, failed or never synced")
    age: str | None
    sla: str | None
    reasons: list[str]

    @classmethod
    def of(
        cls, source: DocumentSourceConfig, fresh: SourceFreshness, run: RunState, settings: Settings
    ) -> UploadSource:
        """A declared source with its freshness and run state."""
        state = fresh.to_dict()
        return cls(
            name=source.name,
            owner=source.owner,
            description=source.description,
            accepts=ACCEPTED,
            max_bytes=settings.upload_max_bytes,
            run=run,
            state=state["state"],
            age=state["age"],
            sla=state["sla"],
            reasons=list(state["reasons"]),
        )


class UploadReceipt(BaseModel):
    """The documents that landed, and what their source's run is doing."""

    source: str
    run: TriggerOutcome = Field(description="started, queued behind a run, or absorbed")
    documents: list[DocumentStatus]


class RemovalReceipt(BaseModel):
    """A document removed from its source's folder; the run leaves the index in step."""

    source: str
    name: str
    run: TriggerOutcome
