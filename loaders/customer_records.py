"""Customer records as documents: one LoadedDocument per record, attached to its customer.

Every record belongs to one customer, named by a configured field; a record's identity is its
file and primary key, its content hash that of its canonical JSON. Records that cannot be
attached (no customer id, no key, a duplicate key) become failures that keep their fields, so
the validation gate still sees every record that was pulled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from freshkb.core import ids
from freshkb.core.errors import DataError
from freshkb.core.records import LoadedDocument, LoadFailure, LoadResult, SourceKind
from freshkb.core.sources import FileOptions
from freshkb.loaders.record_files import KEY_FIELD
from freshkb.loaders.record_text import (
    expand_json,
    record_sections,
    render_record,
    text_value,
    updated_at,
)


def records_to_documents(
    source: str,
    label: str,
    rows: list[dict[str, Any]],
    options: FileOptions,
    default_time: datetime,
) -> LoadResult:
    """The records of one file (or table) as documents, and the records that could not load."""
    customer_field = _customer_field(rows, options)
    key_field = _key_field(rows, options, customer_field)
    documents: list[LoadedDocument] = []
    failures: list[LoadFailure] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        customer = text_value(row.get(customer_field))
        key = text_value(row.get(key_field))
        problem = (
            f"empty customer id field {customer_field!r}"
            if not customer
            else f"empty primary-key field {key_field!r}"
            if not key
            else f"duplicate key {key!r}, first seen at record {seen[key]}; kept the first"
            if key in seen
            else None
        )
        if problem:
            record = {**row, "_file": label, "_key_field": key_field}
            failures.append(LoadFailure(source, f"{label} record {number}", problem, record))
            continue
        seen[key] = number
        identity = RecordIdentity(source, label, key, key_field, customer)
        documents.append(_record_document(identity, row, options, default_time))
    return LoadResult(tuple(documents), tuple(failures))


def _customer_field(rows: list[dict[str, Any]], options: FileOptions) -> str:
    """The field naming each record's customer; a DataError when the file cannot say."""
    if not rows:
        raise DataError("no records; remove the file or check its contents")
    if not options.customer_id:
        raise DataError(
            "no customer id field: set `customer_id` for this file in the sources config"
        )
    if not any(options.customer_id in row for row in rows):
        raise DataError(
            f"no field {options.customer_id!r} in its records (fields: "
            f"{', '.join(sorted(rows[0])[:12])}); set `customer_id` for this file"
        )
    return options.customer_id


def _key_field(rows: list[dict[str, Any]], options: FileOptions, customer_field: str) -> str:
    """The primary-key field: configured, an object-of-objects key, or the customer id."""
    key_field = options.key or (KEY_FIELD if KEY_FIELD in rows[0] else customer_field)
    if options.key is None and key_field == customer_field:
        values = [str(row.get(customer_field)) for row in rows]
        if len(set(values)) != len(values):
            raise DataError(
                f"several records share a {customer_field!r}; set `key:` (the primary-key "
                "field) for this file in the sources config"
            )
    return key_field


@dataclass(frozen=True)
class RecordIdentity:
    """Where a record comes from: its source, file (or table), primary key and customer."""

    source: str
    label: str
    key: str
    key_field: str
    customer: str


def _record_document(
    identity: RecordIdentity, row: dict[str, Any], options: FileOptions, default_time: datetime
) -> LoadedDocument:
    """One record as a document: readable text, identity from file and key, hash of its JSON."""
    source, label, key, customer = identity.source, identity.label, identity.key, identity.customer
    stem = Path(label).stem
    record = {k: expand_json(v) for k, v in row.items()}
    title = text_value(record.get(options.title)) if options.title else None
    text = render_record(f"Record {stem} {key} of customer {customer}", record)
    canonical = json.dumps(record, sort_keys=True, default=str)
    return LoadedDocument(
        source=source,
        kind=SourceKind.CUSTOMERS,
        document_id=ids.document_id(source, ids.record_key(label, key)),
        key=ids.record_key(label, key),
        title=title or f"{stem} {key}",
        content_hash=ids.content_hash(canonical),
        modified_at=updated_at(record) or default_time,
        sections=record_sections(text),
        customer_id=customer,
        metadata={
            "file": label,
            "record_key": key,
            "key_field": identity.key_field,
            "record_json": canonical,
        },
    )
