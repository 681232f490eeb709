"""Document verdicts cached by (sha256 of the text, detector key), so a text is screened once.

The detector key changes with anything a verdict depends on: the fitted detector (`fit_key`:
exemplars, detector version, model), the rule table and the guard's thresholds, so a change to
any of them screens every text again instead of reusing old verdicts. SQLite in the cache
directory by default, in WAL mode so an ingest and a serve (or two ingests) can share it; with
`cache_url` (PostgreSQL), a table every worker shares. The cache only saves time: a corrupt,
locked or read-only file, or a database server that is down, costs a re-screen, never the ingest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from freshkb.core.config import Settings
from freshkb.core.ids import content_hash
from freshkb.core.keyed_blobs import KeyedBlobs
from freshkb.core.sql import display_url, sqlite_url
from freshkb.screening.guard import InjectionGuard, KnownVectors
from freshkb.screening.rules import RuleMatch
from freshkb.screening.verdicts import DocumentVerdict, SuspiciousPassage

log = logging.getLogger(__name__)

metadata = sa.MetaData()

# The table earlier releases created in SQLite by hand: same names, so old caches still count.
verdicts_table = sa.Table(
    "document_verdicts",
    metadata,
    sa.Column("text_hash", sa.Text, primary_key=True),
    sa.Column("detector_key", sa.Text, primary_key=True),
    sa.Column("verdict", sa.Text, nullable=False),  # verdict_to_json
    sqlite_with_rowid=False,
)

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

    def __init__(self, location: Path | str):
        """Open the cache in a SQLite file (a Path) or at a SQLAlchemy URL (a str)."""
        self.url = sqlite_url(location) if isinstance(location, Path) else location
        self._blobs: KeyedBlobs | None = None
        try:
            self._blobs = KeyedBlobs(self.url, verdicts_table, "verdict", _BUSY_SECONDS)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            log.warning(
                "%s: verdict cache unusable (%s); screening without it", display_url(self.url), exc
            )

    def get_many(self, hashes: Sequence[str], detector_key: str) -> dict[str, DocumentVerdict]:
        """Cached verdicts for the hashes that have one under this detector key."""
        if self._blobs is None:
            return {}
        try:
            found = self._blobs.get_many(hashes, detector_key)
            return {text_hash: verdict_from_json(raw) for text_hash, raw in found.items()}
        except (sa.exc.SQLAlchemyError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "%s: verdict cache unreadable (%s); screening again", display_url(self.url), exc
            )
            return {}

    def put_many(self, items: Sequence[tuple[str, DocumentVerdict]], detector_key: str) -> None:
        """Save verdicts; a failure to save is logged, and costs the next run a re-screen."""
        if self._blobs is None or not items:
            return
        rows = [{"text_hash": h, "verdict": verdict_to_json(v)} for h, v in items]
        try:
            self._blobs.put_many(detector_key, rows)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("%s: could not save verdicts (%s)", display_url(self.url), exc)

    def close(self) -> None:
        """Release the database connections."""
        if self._blobs is not None:
            self._blobs.close()
            self._blobs = None


def verdict_cache_path(cache_dir: Path) -> Path:
    """Where the document verdicts are cached under the cache directory."""
    return cache_dir / "screening" / "document-verdicts.sqlite3"


def open_verdict_cache(settings: Settings) -> VerdictCache:
    """The verdict cache the settings name: `cache_url`, else the SQLite file in the cache dir."""
    return VerdictCache(settings.cache_url or verdict_cache_path(settings.cache_dir))


def screen_documents(
    guard: InjectionGuard,
    texts: Sequence[str],
    cache: VerdictCache | None,
    hashes: Sequence[str] | None = None,
    vectors: KnownVectors | None = None,
) -> list[DocumentVerdict]:
    """One verdict per text: cached ones reused, the rest inspected in one batch and saved.
    `hashes`, when the caller has them, are the texts' `content_hash`es; `vectors`, passage
    vectors already made (InjectionGuard.inspect_documents)."""
    hashes = [content_hash(text) for text in texts] if hashes is None else hashes
    known = cache.get_many(hashes, guard.document_key) if cache else {}
    todo = {h: text for h, text in zip(hashes, texts, strict=True) if h not in known}
    fresh = dict(zip(todo, guard.inspect_documents(list(todo.values()), vectors), strict=True))
    if cache:
        cache.put_many(list(fresh.items()), guard.document_key)
    verdicts = {**known, **fresh}
    return [verdicts[h] for h in hashes]


def remembered_reasons(
    guard: InjectionGuard,
    texts: Sequence[str],
    memory: dict[str, str | None],
    cache: VerdictCache | None,
    kept: int,
) -> dict[str, str | None]:
    """Why the guard flags each text (None: it does not), each computed once: from `memory`
    (a process's own, at most `kept` entries), else the cache the ingest screen filled under
    the same detector key (a changed detector misses it), else screened in one batch and saved
    there for the next process."""
    keys = {text: content_hash(text) for text in texts}  # the verdict cache's key too
    todo = [text for text, key in keys.items() if key not in memory]
    if todo:
        verdicts = screen_documents(guard, todo, cache, [keys[text] for text in todo])
        if len(memory) + len(todo) > kept:
            memory.clear()  # bounded; the live chunks are screened again
        for text, verdict in zip(todo, verdicts, strict=True):
            memory[keys[text]] = "; ".join(verdict.reasons) if verdict.flagged else None
    return {text: memory[key] for text, key in keys.items()}
