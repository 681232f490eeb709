"""Moving the alias answers read between index versions, with the freshness ledger kept true.

A rollback is one step for its callers: the alias goes back to the previous complete version,
and the ledger learns that the data now served is no newer than when that version was retired
(else `freshkb status` and the answer path would call old data fresh).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from freshkb.core.config import Settings
from freshkb.core.records import SourceKind
from freshkb.store.ledger import Ledger
from freshkb.store.protocol import IndexVersion
from freshkb.store.weaviate_store import open_store


@dataclass(frozen=True)
class Rollback:
    """What a rollback did: which version answers read before, and the one restored."""

    kind: SourceKind
    previous: str
    restored: IndexVersion

    @property
    def data_as_of(self) -> str | None:
        """When the restored version last served: its data is no newer than this."""
        return self.restored.retired_at or self.restored.promoted_at

    def to_dict(self) -> dict[str, str]:
        """Plain, JSON-serialisable form (what `freshkb rollback --json` prints)."""
        return {"kind": self.kind.value, "from": self.previous, "to": self.restored.name}


def rollback_collection(settings: Settings, kind: SourceKind) -> Rollback:
    """Point the alias of `kind` back at the previous complete version; cap its sources' last
    success in the ledger at the moment that version was retired."""
    with open_store(settings) as store:
        previous, restored = store.rollback(kind)
    if restored.retired_at:
        retired_at = datetime.fromisoformat(restored.retired_at.replace("Z", "+00:00"))
        ledger = Ledger(settings.ledger_database_url)
        try:
            ledger.cap_last_success(kind.value, retired_at)
        finally:
            ledger.close()
    return Rollback(kind=kind, previous=previous, restored=restored)
