"""A customer record as a document: readable text (nested JSON rendered as indented lines, so
both the retriever and a human can read it), its update time, and its sections.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from freshkb.core.records import Section
from freshkb.loaders.record_files import KEY_FIELD

UPDATED_FIELDS = ("updated_at", "updatedAt", "last_modified", "modified_at")
SECTION_LIMIT = 2000


def expand_json(value: Any) -> Any:
    """A string cell holding a JSON object or array, parsed (CSV exports often nest JSON)."""
    if isinstance(value, str) and value[:1] in "[{" and value[-1:] in "]}":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def text_value(value: Any) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def updated_at(record: dict[str, Any]) -> datetime | None:
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


def record_sections(text: str) -> tuple[Section, ...]:
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
