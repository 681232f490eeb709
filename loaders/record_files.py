"""The records of one customer file: CSV, JSON (array, object of objects, or one object), JSON
lines, or Parquet, as dicts of plain values. A file that cannot be read as a whole raises a
DataError naming what is wrong and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from freshkb.core.errors import DataError, UnsupportedFileType

RECORD_FORMATS = (".csv", ".json", ".jsonl", ".ndjson", ".parquet")
KEY_FIELD = "_key"  # the key of an object of objects ({"noah_brown_6181": {...}})


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
        return [plain_values(row) for row in frame.to_dict(orient="records")]
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


def plain_values(row: dict[str, Any]) -> dict[str, Any]:
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
