"""Customer records from CSV, JSON, JSON lines, Parquet files or a SQL table/query.

Every record belongs to one customer, named by a configured field, and becomes one document
whose text reads like the record (nested JSON rendered as indented lines), so that both the
retriever and a human can read it. Records of several files (users and their orders) attach to
the same customer through their own id fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freshkb.core import ids
from freshkb.core.config import FileOptions, SourceConfig
from freshkb.core.errors import ConfigError, DataError, TransientError, UnsupportedFileType
from freshkb.core.records import LoadedDocument, LoadFailure, LoadResult, Section, SourceKind
from freshkb.loaders.base import ProgressCallback, check_folder, load_each_file, modified_time

RECORD_FORMATS = (".csv", ".json", ".jsonl", ".ndjson", ".parquet")
KEY_FIELD = "_key"
UPDATED_FIELDS = ("updated_at", "updatedAt", "last_modified", "modified_at")
SECTION_LIMIT = 2000


class CustomerRecordsLoader:
    """Loads every record of a customers source as one document attached to its customer."""

    def __init__(self, source: SourceConfig):
        self.source = source

    def precheck(self) -> None:
        """The folder must exist, or the database answer."""
        if not self.source.is_sql:
            check_folder(self.source)
            return
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(self.source.location)
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.ArgumentError as exc:
            raise ConfigError(f"source {self.source.name!r}: bad SQLAlchemy URL: {exc}") from exc
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"source {self.source.name!r}: the database driver {exc.name!r} for "
                f"{_masked(self.source.location)} is not installed; pip install it"
            ) from exc
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise TransientError(
                f"source {self.source.name!r}: cannot connect to {_masked(self.source.location)}"
                f" ({type(exc).__name__}); check the server and the URL"
            ) from exc

    def load(self, progress: ProgressCallback | None = None) -> LoadResult:
        """Every record; a bad file or record becomes a LoadFailure."""
        if self.source.is_sql:
            label = self.source.table or "query"
            options = FileOptions(customer_id=self.source.customer_id, key=self.source.key)
            result = self._records_to_documents(label, self._sql_rows(), options, datetime.now(UTC))
            if progress:
                progress(1, 1, label)
            return result
        return load_each_file(
            self.source,
            lambda path, relative: self._records_to_documents(
                relative,
                read_records(path),
                self.source.file_options(relative),
                modified_time(path),
            ),
            progress,
        )

    def _sql_rows(self) -> list[dict[str, Any]]:
        import pandas as pd
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.source.location)
        statement = self.source.query or f'SELECT * FROM "{self.source.table}"'
        try:
            with engine.connect() as connection:
                frame = pd.read_sql(sqlalchemy.text(statement), connection)
        except sqlalchemy.exc.DBAPIError as exc:
            raise ConfigError(
                f"source {self.source.name!r}: SQL failed on {_masked(self.source.location)}: "
                f"{exc.orig}; check `table`/`query`"
            ) from exc
        return [_plain(row) for row in frame.to_dict(orient="records")]

    def _records_to_documents(
        self,
        label: str,
        rows: list[dict[str, Any]],
        options: FileOptions,
        default_time: datetime,
    ) -> LoadResult:
        customer_field = options.customer_id
        if not rows:
            raise DataError("no records; remove the file or check its contents")
        if not customer_field:
            raise DataError(
                "no customer id field: set `customer_id` for this file in the sources config"
            )
        if not any(customer_field in row for row in rows):
            raise DataError(
                f"no field {customer_field!r} in its records (fields: "
                f"{', '.join(sorted(rows[0])[:12])}); set `customer_id` for this file"
            )
        key_field = options.key or (KEY_FIELD if KEY_FIELD in rows[0] else customer_field)
        if options.key is None and key_field == customer_field:
            values = [str(row.get(customer_field)) for row in rows]
            if len(set(values)) != len(values):
                raise DataError(
                    f"several records share a {customer_field!r}; set `key:` (the primary-key "
                    "field) for this file in the sources config"
                )
        documents: list[LoadedDocument] = []
        failures: list[LoadFailure] = []
        seen: dict[str, int] = {}
        stem = Path(label).stem
        for number, row in enumerate(rows, 1):
            item = f"{label} record {number}"
            customer = _text_value(row.get(customer_field))
            if not customer:
                failures.append(
                    LoadFailure(
                        self.source.name,
                        item,
                        f"empty customer id field {customer_field!r}",
                        record=_failed_record(row, label, key_field),
                    )
                )
                continue
            key = _text_value(row.get(key_field))
            if not key:
                failures.append(
                    LoadFailure(
                        self.source.name,
                        item,
                        f"empty primary-key field {key_field!r}",
                        record=_failed_record(row, label, key_field),
                    )
                )
                continue
            if key in seen:
                failures.append(
                    LoadFailure(
                        self.source.name,
                        item,
                        f"duplicate key {key!r}, first seen at record {seen[key]}; kept the first",
                        record=_failed_record(row, label, key_field),
                    )
                )
                continue
            seen[key] = number
            record = {k: _expand_json(v) for k, v in row.items()}
            title = _text_value(record.get(options.title)) if options.title else None
            text = render_record(f"Record {stem} {key} of customer {customer}", record)
            canonical = json.dumps(record, sort_keys=True, default=str)
            documents.append(
                LoadedDocument(
                    source=self.source.name,
                    kind=SourceKind.CUSTOMERS,
                    document_id=ids.document_id(self.source.name, f"{label}:{key}"),
                    key=f"{label}:{key}",
                    title=title or f"{stem} {key}",
                    content_hash=ids.content_hash(canonical),
                    modified_at=_updated_at(record) or default_time,
                    sections=_sections(text),
                    customer_id=customer,
                    metadata={
                        "file": label,
                        "record_key": key,
                        "key_field": key_field,
                        "record_json": canonical,
                    },
                )
            )
        return LoadResult(tuple(documents), tuple(failures))


def _failed_record(row: dict[str, Any], label: str, key_field: str) -> dict[str, Any]:
    """The fields of a record that did not load, with the file and key field it came under."""
    return {**row, "_file": label, "_key_field": key_field}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one file, as dicts of plain values."""
    suffix = path.suffix.lower()
    if suffix not in RECORD_FORMATS:
        raise UnsupportedFileType(
            f"unsupported file type {suffix or '(none)'!r}, skipped; supported: "
            f"{', '.join(RECORD_FORMATS)} (narrow the source's `include` globs to leave it out)"
        )
    data = path.read_bytes()
    if not data.strip():
        raise DataError("empty file (0 bytes); remove it or upload the full export")
    if suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise DataError(f"not a readable Parquet file ({exc}); re-export it") from exc
        return [_plain(row) for row in frame.to_dict(orient="records")]
    if b"\x00" in data[:8192]:
        raise DataError(f"binary content in a {suffix} file; check the file type")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 at byte {exc.start}; save the file as UTF-8") from exc
    if suffix == ".csv":
        return _csv_records(text)
    if suffix in (".jsonl", ".ndjson"):
        return list(_json_lines(text))
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        lines = text.strip().splitlines()
        if len(lines) > 1 and lines[0].strip().startswith("{") and lines[0].strip().endswith("}"):
            return list(_json_lines(text))
        raise DataError(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    return _json_records(parsed)


def _csv_records(text: str) -> list[dict[str, Any]]:
    import csv

    reader = csv.reader(io_lines(text), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("no header row") from None
    except csv.Error as exc:
        raise DataError(f"malformed CSV on line 1: {exc}") from exc
    if len(set(header)) != len(header):
        raise DataError("repeated column names in the header; make them unique")
    rows = []
    try:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"malformed CSV on line {reader.line_num}: {len(row)} fields, the header has "
                    f"{len(header)}; fix the quoting or the separators"
                )
            rows.append(dict(zip(header, row, strict=True)))
    except csv.Error as exc:
        raise DataError(f"malformed CSV on line {reader.line_num}: {exc}") from exc
    return rows


def io_lines(text: str) -> Iterator[str]:
    """Lines for the csv module, newlines kept so quoted fields may span lines."""
    import io

    return iter(io.StringIO(text, newline=""))


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON on line {number}: {exc.msg}") from exc
        if not isinstance(value, dict):
            raise DataError(f"line {number} is not a JSON object")
        yield value


def _json_records(parsed: Any) -> list[dict[str, Any]]:
    if isinstance(parsed, list):
        if not all(isinstance(item, dict) for item in parsed):
            raise DataError("a JSON array of records must hold only objects")
        return parsed
    if isinstance(parsed, dict):
        values = list(parsed.values())
        if values and all(isinstance(v, dict) for v in values):
            # An object of objects keyed by id (users.json: {"noah_brown_6181": {...}}).
            return [
                {KEY_FIELD: key, **value} if KEY_FIELD not in value else value
                for key, value in parsed.items()
            ]
        return [parsed]
    raise DataError(
        "expected JSON records: an array of objects, an object of objects, or one object"
    )


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Pandas values as plain JSON-friendly Python values (NaN as None, timestamps as ISO)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        elif hasattr(value, "tolist"):
            value = value.tolist()
        elif isinstance(value, float) and value != value:  # NaN
            value = None
        out[str(key)] = value
    return out


def _expand_json(value: Any) -> Any:
    """A string cell holding a JSON object or array, parsed (CSV exports often nest JSON)."""
    if isinstance(value, str) and value[:1] in "[{" and value[-1:] in "]}":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _text_value(value: Any) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _updated_at(record: dict[str, Any]) -> datetime | None:
    for field in UPDATED_FIELDS:
        value = record.get(field)
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def render_record(heading: str, record: dict[str, Any]) -> str:
    """A record as readable text: 'field: value' lines, nested values indented below."""
    lines = [heading]
    for key, value in record.items():
        if key == KEY_FIELD:
            continue
        lines.extend(_render(key, value, 0))
    return "\n".join(lines)


def _label(key: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", key).replace("_", " ")


def _render(key: str, value: Any, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(value, dict):
        if not value:
            return []
        lines = [f"{pad}{_label(key)}:"]
        for k, v in value.items():
            lines.extend(_render(str(k), v, depth + 1))
        return lines
    if isinstance(value, list):
        if not value:
            return []
        if all(not isinstance(v, dict | list) for v in value):
            return [f"{pad}{_label(key)}: {', '.join(str(v) for v in value)}"]
        lines = [f"{pad}{_label(key)}:"]
        for item in value:
            if isinstance(item, dict):
                inner = [line for k, v in item.items() for line in _render(str(k), v, depth + 2)]
                if inner:
                    inner[0] = f"{pad}  - {inner[0].lstrip()}"
                lines.extend(inner)
            else:
                lines.append(f"{pad}  - {item}")
        return lines
    if value is None or value == "":
        return []
    return [f"{pad}{_label(key)}: {value}"]


def _sections(text: str) -> tuple[Section, ...]:
    """One section per record, split at top-level fields when the record is long."""
    if len(text) <= SECTION_LIMIT:
        return (Section(text=text, category="NarrativeText"),)
    sections: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines():
        top_level = not line.startswith(" ")
        if top_level and size > SECTION_LIMIT // 2:
            sections.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        sections.append("\n".join(current))
    return tuple(Section(text=s, category="NarrativeText") for s in sections)


def _masked(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
