"""The upload register: every document uploaded into a source, who uploaded it, and how far it
got: pending (landed, waiting for the source's run) -> validated (the loader extracted its
text) -> ingested (its chunks are in the index), or failed with the reason in words.

A table beside the freshness ledger, in the same SQL database, so the API, the CLI and a flow
run in another process all read and write one record. A state is only ever moved for the
content it was decided on: a run that checked the old bytes of a name that was uploaded again
meanwhile leaves the new upload pending for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from freshkb.core.sources import DocumentSourceConfig
from freshkb.core.sql import as_utc, sql_engine
from freshkb.loaders.base import list_files
from freshkb.store.ledger import IngestRun, Ledger

DocumentState = Literal["pending", "validated", "ingested", "failed"]

metadata = sa.MetaData()

uploads_table = sa.Table(
    "uploaded_documents",
    metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(300), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("pages", sa.Integer, nullable=True),
    sa.Column("chunks", sa.Integer, nullable=True),
    sa.Column("uploaded_by", sa.String(128), nullable=False),
    sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
)


@dataclass(frozen=True)
class UploadedDocument:
    """One uploaded document and its state."""

    source: str
    name: str
    state: DocumentState
    reason: str | None
    content_hash: str | None  # None: a file placed in the folder by hand (not hashed to list)
    size_bytes: int
    pages: int | None
    chunks: int | None
    uploaded_by: str | None  # None: placed in the folder by hand, not uploaded
    uploaded_at: datetime | None
    updated_at: datetime | None
    flow_run_id: str | None  # the run that last decided its state

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return {
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "content_hash": self.content_hash,
            "size_bytes": self.size_bytes,
            "pages": self.pages,
            "chunks": self.chunks,
            "uploaded_by": self.uploaded_by,
            "uploaded_at": self.uploaded_at.isoformat() if self.uploaded_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "flow_run_id": self.flow_run_id,
        }


class UploadRegister:
    """Reads and writes the upload register."""

    def __init__(self, url: str):
        self.engine = sql_engine(url, metadata)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def record_upload(
        self, source: str, name: str, content_hash: str, size_bytes: int, uploaded_by: str
    ) -> None:
        """A new upload of `name` landed: pending, whatever the name held before."""
        now = datetime.now(UTC)
        values = {
            "state": "pending",
            "reason": None,
            "content_hash": content_hash,
            "size_bytes": size_bytes,
            "pages": None,
            "chunks": None,
            "uploaded_by": uploaded_by[:128],
            "uploaded_at": now,
            "updated_at": now,
            "flow_run_id": None,
        }
        with self.engine.begin() as connection:
            updated = connection.execute(
                sa.update(uploads_table).where(*_key(source, name)).values(values)
            )
            if updated.rowcount == 0:
                connection.execute(
                    sa.insert(uploads_table).values(source=source, name=name, **values)
                )

    def mark(
        self,
        source: str,
        name: str,
        content_hash: str | None,
        state: DocumentState,
        **details: Any,
    ) -> bool:
        """Move a document to `state` (with reason, pages, chunks, flow_run_id) if it still
        holds `content_hash`; False when a newer upload replaced it meanwhile."""
        allowed = {"reason", "pages", "chunks", "flow_run_id"}
        unknown = set(details) - allowed
        if unknown:
            raise TypeError(f"unknown document fields: {sorted(unknown)}")
        if content_hash is None:  # a file placed by hand: the register has no entry to move
            return False
        with self.engine.begin() as connection:
            updated = connection.execute(
                sa.update(uploads_table)
                .where(*_key(source, name), uploads_table.c.content_hash == content_hash)
                .values(state=state, updated_at=datetime.now(UTC), **details)
            )
        return updated.rowcount > 0

    def forget(self, source: str, name: str) -> None:
        """The document was removed from the source."""
        with self.engine.begin() as connection:
            connection.execute(sa.delete(uploads_table).where(*_key(source, name)))

    def documents(
        self, source: str, states: tuple[DocumentState, ...] = ()
    ) -> list[UploadedDocument]:
        """The source's uploaded documents (only those in `states` if given), by name."""
        query = sa.select(uploads_table).where(uploads_table.c.source == source)
        if states:
            query = query.where(uploads_table.c.state.in_(states))
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(uploads_table.c.name)).mappings().all()
        return [_document(row) for row in rows]


def _key(source: str, name: str) -> tuple[sa.ColumnElement[bool], ...]:
    return (uploads_table.c.source == source, uploads_table.c.name == name)


def _document(row: sa.RowMapping) -> UploadedDocument:
    return UploadedDocument(
        source=row["source"],
        name=row["name"],
        state=row["state"],
        reason=row["reason"],
        content_hash=row["content_hash"],
        size_bytes=int(row["size_bytes"]),
        pages=row["pages"],
        chunks=row["chunks"],
        uploaded_by=row["uploaded_by"],
        uploaded_at=as_utc(row["uploaded_at"]),
        updated_at=as_utc(row["updated_at"]),
        flow_run_id=row["flow_run_id"],
    )


def source_documents(
    source: DocumentSourceConfig, register: UploadRegister, ledger: Ledger
) -> list[UploadedDocument]:
    """Every document in the source's folder: an upload as the register has it, a file placed
    there by hand as the source's last finished run saw it."""
    rows = {doc.name: doc for doc in register.documents(source.name)}
    last = next((run for run in ledger.runs(source.name, 5) if run.finished_at), None)
    if not Path(source.location).is_dir():
        return []
    return [
        rows.get(relative) or _placed(source.name, path, relative, last)
        for path, relative in list_files(source)
    ]


def _placed(source: str, path: Path, name: str, last: IngestRun | None) -> UploadedDocument:
    """A file placed in the folder by hand: what the last run that could have seen it says."""
    stats = path.stat()
    state: DocumentState = "pending"
    reason: str | None = "waiting for the source's next run"
    if last is not None and last.started_at.timestamp() >= stats.st_mtime:
        failures = {item["item"]: item["reason"] for item in last.report.get("failures", [])}
        if name in failures:
            state, reason = "failed", failures[name]
        elif last.status == "completed":
            state, reason = "ingested", None
        else:
            state, reason = "failed", f"the last run failed: {last.error}"
    return UploadedDocument(
        source=source,
        name=name,
        state=state,
        reason=reason,
        content_hash=None,
        size_bytes=stats.st_size,
        pages=None,
        chunks=None,
        uploaded_by=None,
        uploaded_at=None,
        updated_at=None,
        flow_run_id=last.flow_run_id if last and state != "pending" else None,
    )
