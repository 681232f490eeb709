"""The loaded batch as pandas frames, the shape Great Expectations validates.

Every item that was pulled gets a row, whether it loaded or not, so completeness checks see
the failures too: a duplicate key dropped by the loader is still a duplicate here.

- items: one row per document or record, and per file that failed whole (`loaded` false).
- documents: the loaded documents only (counts, empty texts).
- records of one file group: every record pulled from the files under one `files:` glob (or
  under the source defaults), with their own fields as columns, for column expectations.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from freshkb.core.records import LoadResult, SourceKind
from freshkb.core.sources import CustomerSourceConfig, SourceConfig

# Fields recognised as a record's last-update time when `record_time_field` is not set.
UPDATED_FIELDS = ("updated_at", "updatedAt", "last_modified", "modified_at", "lastModified")
RECORD_TIME = "_updated_at"


@dataclass(frozen=True)
class ValidationFrames:
    """The frames of one source's load."""

    items: pd.DataFrame
    documents: pd.DataFrame
    record_groups: dict[str, pd.DataFrame]  # file glob -> its records (customers only)


def build_frames(source: SourceConfig, loaded: LoadResult) -> ValidationFrames:
    """Frames of every item of a load (see the module docstring)."""
    item_rows: list[dict[str, Any]] = []
    document_rows: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    time_field = source.freshness.record_time_field
    for document in loaded.documents:
        item_rows.append({"item": document.key, "loaded": True, "reason": None})
        document_rows.append(
            {
                "key": document.key,
                "title": document.title,
                # None (skipped by GX) for an unchanged file not parsed again: its text passed
                # this check when it was written, and the index still holds it.
                "text_chars": None
                if document.metadata.get("reused")
                else len(document.text.strip()),
                "modified_at": pd.Timestamp(document.modified_at),
                "customer_id": document.customer_id,
            }
        )
        if document.kind is SourceKind.CUSTOMERS:
            record = json.loads(document.metadata.get("record_json", "{}"))
            label = str(document.metadata.get("file", ""))
            groups[_group(source, label)].append(
                _record_row(record, label, str(document.metadata.get("record_key")), time_field)
                | {"_loaded": True}
            )
    for failure in loaded.failures:
        if failure.unsupported:  # never a candidate: in the run report, not in the failed share
            continue
        item_rows.append({"item": failure.item, "loaded": False, "reason": failure.reason})
        if failure.record is not None:
            record = dict(failure.record)
            label = str(record.pop("_file", ""))
            key_field = str(record.pop("_key_field", ""))
            key = record.get(key_field)
            groups[_group(source, label)].append(
                _record_row(record, label, None if key is None else str(key), time_field)
                | {"_loaded": False}
            )
    items = pd.DataFrame(item_rows, columns=["item", "loaded", "reason"])
    items["loaded"] = items["loaded"].astype(bool)
    documents = pd.DataFrame(
        document_rows, columns=["key", "title", "text_chars", "modified_at", "customer_id"]
    )
    return ValidationFrames(
        items=items,
        documents=documents,
        record_groups={name: _records_frame(rows) for name, rows in groups.items()},
    )


def _group(source: SourceConfig, label: str) -> str:
    return source.file_group(label) if isinstance(source, CustomerSourceConfig) else "*"


def _record_row(
    record: dict[str, Any], label: str, key: str | None, time_field: str | None
) -> dict[str, Any]:
    """A record's top-level fields as scalars (nested values as JSON text) plus freshkb's own."""
    row = {
        name: json.dumps(value, sort_keys=True, default=str)
        if isinstance(value, dict | list)
        else value
        for name, value in record.items()
        if not name.startswith("_") or name == "_key"
    }
    row["_file"] = label
    row["_record_key"] = key
    row[RECORD_TIME] = _record_time(record, time_field)
    return row


def _record_time(record: dict[str, Any], time_field: str | None) -> pd.Timestamp | None:
    candidates = (time_field,) if time_field else UPDATED_FIELDS
    for name in candidates:
        value = record.get(name)
        if value in (None, ""):
            continue
        try:
            stamp = pd.Timestamp(value)
        except (ValueError, TypeError):
            return None
        return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return None


def _records_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    # Empty strings are missing values for completeness (CSV has no null).
    frame = frame.replace({"": None})
    frame[RECORD_TIME] = pd.to_datetime(frame[RECORD_TIME], utc=True)
    return frame
