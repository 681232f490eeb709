"""Document verdicts cached by (sha256 of the text, detector key), so a text is screened once.

The detector key changes with anything a verdict depends on: the fitted detector (`fit_key`:
exemplars, detector version, model), the rule table and the guard's thresholds, so a change to
any of them screens every text again instead of reusing old verdicts. SQLite in the cache
directory, in WAL mode so an ingest and a serve (or two ingests) can share it. The cache only
saves time: a corrupt, locked or read-only file costs a re-screen, never the ingest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from freshkb.core.ids import content_hash
from freshkb.screening.guard import InjectionGuard
from freshkb.screening.rules import RuleMatch
from freshkb.screening.verdicts import DocumentVerdict, SuspiciousPassage

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS document_verdicts (
    text_hash TEXT NOT NULL,
    detector_key TEXT NOT NULL,
    verdict TEXT NOT NULL,
    PRIMARY KEY (text_hash, detector_key)
) WITHOUT ROWID
"""
# SQLite's default limit on bound parameters per statement is 999 on old builds.
_LOOKUP_BATCH = 500
# Seconds to wait for another process's write: a screen without the cache is cheaper than a
# long wait, and a lock held longer than this means something is wrong with that process.
_BUSY_SECONDS = 2.0


def verdict_to_json(verdict: DocumentVerdict) -> str:
    """A verdict as compact JSON."""
    return json.dumps(asdict(verdict), separators=(",", ":"))


def verdict_from_json(raw: str) -> DocumentVerdict:
    """The verdict saved by `verdict_to_json`."""
    data: dict[str, Any] = json.loads(raw)
    passages = tuple(
        SuspiciousPassage(
            text=p["text"],
            detector_score=p["detector_score"],
            detector_hit=p["detector_hit"],
            rule_matches=tuple(RuleMatch(**m) for m in p["rule_matches"]),
        )
        for p in data["passages"]
    )
    return DocumentVerdict(
        flagged=data["flagged"],
        score=data["score"],
        rules_hit=data["rules_hit"],
        detector_hit=data["detector_hit"],
        passages=passages,
    )


class VerdictCache:
    """A persistent map (text hash, detector key) -> document verdict; failures are misses."""

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=_BUSY_SECONDS, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.commit()
            self._db = db
        except (OSError, sqlite3.Error) as exc:
            log.warning("%s: verdict cache unusable (%s); screening without it", path, exc)

    def get_many(self, hashes: Sequence[str], detector_key: str) -> dict[str, DocumentVerdict]:
        """Cached verdicts for the hashes that have one under this detector key."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, DocumentVerdict] = {}
        if self._db is None:
            return found
        try:
            for start in range(0, len(wanted), _LOOKUP_BATCH):
                batch = wanted[start : start + _LOOKUP_BATCH]
                rows = self._db.execute(
                    "SELECT text_hash, verdict FROM document_verdicts WHERE detector_key = ?"
                    f" AND text_hash IN ({','.join('?' * len(batch))})",
                    [detector_key, *batch],
                )
                found.update((h, verdict_from_json(raw)) for h, raw in rows)
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: verdict cache unreadable (%s); screening again", self.path, exc)
            return {}
        return found

    def put_many(self, items: Sequence[tuple[str, DocumentVerdict]], detector_key: str) -> None:
        """Save verdicts; a failure to save is logged, and costs the next run a re-screen."""
        if self._db is None or not items:
            return
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO document_verdicts (text_hash, detector_key, verdict) "
                "VALUES (?, ?, ?)",
                [(h, detector_key, verdict_to_json(v)) for h, v in items],
            )
            self._db.commit()
        except sqlite3.Error as exc:
            log.warning("%s: could not save verdicts (%s)", self.path, exc)
            with contextlib.suppress(sqlite3.Error):
                self._db.rollback()

    def close(self) -> None:
        """Close the database."""
        if self._db is not None:
            self._db.close()
            self._db = None


def verdict_cache_path(cache_dir: Path) -> Path:
    """Where the document verdicts are cached under the cache directory."""
    return cache_dir / "screening" / "document-verdicts.sqlite3"


def screen_documents(
    guard: InjectionGuard, texts: Sequence[str], cache: VerdictCache | None
) -> list[DocumentVerdict]:
    """One verdict per text: cached ones reused, the rest inspected in one batch and saved."""
    hashes = [content_hash(text) for text in texts]
    known = cache.get_many(hashes, guard.document_key) if cache else {}
    todo = {h: text for h, text in zip(hashes, texts, strict=True) if h not in known}
    fresh = dict(zip(todo, guard.inspect_documents(list(todo.values())), strict=True))
    if cache:
        cache.put_many(list(fresh.items()), guard.document_key)
    verdicts = {**known, **fresh}
    return [verdicts[h] for h in hashes]
