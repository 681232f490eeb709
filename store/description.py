"""What freshkb keeps in a collection's description: how a version was built and what became of it.

Weaviate gives a collection no metadata but its description, so a version's record lives there,
written as `freshkb documents; {"model": ..., "dim": ...}` (JSON: a model path may hold spaces).
Collections written by freshkb before this record existed carry `key=value` pairs instead
(`freshkb documents; model=... dim=384 created=...`); both forms are read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from freshkb.core.records import SourceKind

_KEY_VALUE = re.compile(r"(?P<name>[a-z_]+)=(?P<value>[^\s;]+)")
# Attribute -> key in the description; the keys are the ones of the older key=value form.
_KEYS = {
    "model_id": "model",
    "dimension": "dim",
    "created_at": "created",
    "flow_run_id": "flow_run",
    "promoted_at": "promoted",
    "retired_at": "retired",
    "rolled_back_at": "rolled_back",
    "failed_at": "failed",
}


class VersionState(StrEnum):
    """Where a version stands in its life, by its description alone (liveness is the alias's)."""

    BUILDING = "building"  # created, not yet promoted
    COMPLETE = "complete"  # promoted once: filled and checked completely
    ROLLED_BACK = "rolled back"  # answers were moved away from it: never a rollback target
    FAILED = "failed"  # its rebuild did not complete: never promoted, dropped by the next one


def timestamp(at: datetime | None = None) -> str:
    """A description's time stamp: UTC to the second, `2026-11-25T12:00:00Z`."""
    return (at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class VersionDescription:
    """The record a version's collection description carries."""

    kind: SourceKind
    model_id: str | None = None
    dimension: int | None = None
    created_at: str | None = None
    flow_run_id: str | None = None
    promoted_at: str | None = None
    retired_at: str | None = None
    rolled_back_at: str | None = None
    failed_at: str | None = None

    @property
    def state(self) -> VersionState:
        """Failed > rolled back > complete > building."""
        if self.failed_at:
            return VersionState.FAILED
        if self.rolled_back_at:
            return VersionState.ROLLED_BACK
        if self.promoted_at:
            return VersionState.COMPLETE
        return VersionState.BUILDING

    def with_times(
        self,
        *,
        promoted_at: str | None = None,
        retired_at: str | None = None,
        rolled_back_at: str | None = None,
        failed_at: str | None = None,
    ) -> VersionDescription:
        """A copy with the given time stamps set and the others kept."""
        return replace(
            self,
            promoted_at=promoted_at or self.promoted_at,
            retired_at=retired_at or self.retired_at,
            rolled_back_at=rolled_back_at or self.rolled_back_at,
            failed_at=failed_at or self.failed_at,
        )

    def to_text(self) -> str:
        """The description text to store."""
        record: dict[str, Any] = {
            key: getattr(self, name)
            for name, key in _KEYS.items()
            if getattr(self, name) is not None
        }
        return f"freshkb {self.kind.value}; {json.dumps(record, separators=(', ', ': '))}"

    @classmethod
    def from_text(cls, text: str | None, kind: SourceKind) -> VersionDescription:
        """Read a description in either form; a collection without one has only its kind."""
        text = text or ""
        body = (text.partition(";")[2] if ";" in text else text).strip()
        if body.startswith("{"):
            try:
                found: dict[str, Any] = json.loads(body)
            except ValueError:
                found = {}
        else:
            found = {m["name"]: m["value"] for m in _KEY_VALUE.finditer(body)}
        values: dict[str, Any] = {name: found[key] for name, key in _KEYS.items() if key in found}
        if values.get("dimension") is not None:
            values["dimension"] = int(values["dimension"])
        return cls(kind=kind, **values)
