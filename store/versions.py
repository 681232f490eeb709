"""Versions of a collection behind its alias: create, promote, roll back, drop.

`PolicyChunk_v1`, `PolicyChunk_v2`... are physical collections; the alias `PolicyChunk` names
the one answers read. A rebuild fills a new version and moves the alias only when it is
complete, so answers never read a half-built index. On a cluster every schema change here
(create, alias switch, drop, description stamp) rides out a Raft leader election.
"""

from __future__ import annotations

import re

import weaviate
from weaviate.exceptions import WeaviateBaseError

from freshkb.core.errors import ConfigError, TransientError
from freshkb.core.records import SourceKind
from freshkb.store.cluster import through_election
from freshkb.store.collections import LiveCollections
from freshkb.store.description import VersionDescription, timestamp
from freshkb.store.protocol import IndexVersion
from freshkb.store.schema import ALIASES, add_missing_properties, create_collection

_VERSION_NAME = re.compile(r"^(?P<alias>[A-Za-z]+)_v(?P<number>\d+)$")


class VersionCatalog:
    """The versions of both collections on one server."""

    def __init__(self, live: LiveCollections):
        self.live = live

    @property
    def client(self) -> weaviate.WeaviateClient:
        """The server's client."""
        return self.live.client

    def ensure_schema(
        self, kind: SourceKind, model_id: str, dimension: int, flow_run_id: str = "local"
    ) -> str:
        """The live collection of `kind`, created (as version 1) if there is none yet.

        Refuses a live collection built with another embedding model: vectors of two models are
        never mixed; `freshkb rebuild` builds a new version instead.
        """
        alias = ALIASES[kind]
        try:
            name = self.live.alias_target(kind)
            if name is None:
                name = self.create_version(kind, model_id, dimension, flow_run_id)
                self.promote(kind, name)
        except WeaviateBaseError as exc:
            raise TransientError(f"Weaviate schema set-up for {alias} failed: {exc}") from exc
        stored = self.description(name, kind)
        if stored.model_id and (stored.model_id != model_id or stored.dimension != dimension):
            raise ConfigError(
                f"the live {alias} collection ({name}) holds vectors of model {stored.model_id} "
                f"({stored.dimension} dims) but the configured embedding model is {model_id} "
                f"({dimension} dims); vectors of two models are never mixed: run `freshkb "
                f"rebuild --kind {kind.value}` to build a new version with the configured model "
                "(the alias switches to it only when it is complete), or set the model back"
            )
        add_missing_properties(self.client, name, kind)
        self.live.pin(kind, name, dimension)
        return name

    def use_collection(self, kind: SourceKind, name: str) -> None:
        """Write to and read from `name` instead of the alias target (a rebuild in progress)."""
        self.live.pin(kind, name, self.description(name, kind).dimension)

    def description(self, name: str, kind: SourceKind | None = None) -> VersionDescription:
        """The record kept in the description of collection `name`."""
        config = through_election(
            self.client.collections.get(name).config.get, f"reading the schema of {name}"
        )
        return VersionDescription.from_text(config.description, kind or _kind_of(name))

    def create_version(
        self, kind: SourceKind, model_id: str, dimension: int, flow_run_id: str
    ) -> str:
        """Create the next, empty version of `kind`'s collection (not yet live); its name."""
        taken = [v.number for v in self.versions(kind, count_objects=False)]
        name = f"{ALIASES[kind]}_v{max(taken, default=0) + 1}"
        record = VersionDescription(
            kind=kind,
            model_id=model_id,
            dimension=dimension,
            created_at=timestamp(),
            flow_run_id=flow_run_id,
        )
        create_collection(self.client, name, kind, record.to_text(), self.live.replication)
        return name

    def promote(self, kind: SourceKind, name: str) -> str | None:
        """Point `kind`'s alias at `name` (answers switch at once); returns the previous target."""
        alias = ALIASES[kind]
        now = timestamp()
        previous = self.live.alias_target(kind)
        if previous == name:
            return previous
        if previous is None:
            through_election(lambda: self._point_alias(kind, name), f"creating alias {alias}")
        else:
            through_election(lambda: self._point_alias(kind, name), f"switching alias {alias}")
            self._stamp(previous, kind, retired_at=now)
        if self.description(name, kind).promoted_at is None:
            self._stamp(name, kind, promoted_at=now)
        self.live.pin(kind, name)
        return previous

    def rollback(self, kind: SourceKind) -> tuple[str, IndexVersion]:
        """Point the alias back at the most recently promoted earlier version.

        The version rolled back from is marked and never chosen by a later rollback, so two
        rollbacks in a row go two versions back rather than toggling. Returns (from, to).
        """
        versions = self.versions(kind, count_objects=False)
        live = next((v for v in versions if v.live), None)
        if live is None:
            raise ConfigError(f"no live {ALIASES[kind]} collection: nothing to roll back")
        candidates = [v for v in versions if not v.live and v.complete and v.rolled_back_at is None]
        if not candidates:
            raise ConfigError(
                f"{live.name} is the only complete {ALIASES[kind]} version: there is no "
                "previous version to roll back to"
            )
        target = max(candidates, key=lambda v: (v.promoted_at or "", v.number))
        now = timestamp()
        self.promote(kind, target.name)
        self._stamp(live.name, kind, rolled_back_at=now)
        return live.name, target

    def versions(
        self, kind: SourceKind | None = None, count_objects: bool = True
    ) -> list[IndexVersion]:
        """Every freshkb collection version (of one kind, or all), oldest first."""
        kinds = [kind] if kind else list(ALIASES)
        live = {each: self.live.alias_target(each) for each in kinds}
        found = []
        names = through_election(
            lambda: self.client.collections.list_all(simple=True), "listing collections"
        )
        for name in names:
            match = _VERSION_NAME.match(name)
            version_kind = next((k for k in kinds if match and ALIASES[k] == match["alias"]), None)
            if match is None or version_kind is None:
                continue
            record = self.description(name, version_kind)
            found.append(
                IndexVersion(
                    name=name,
                    kind=version_kind,
                    number=int(match["number"]),
                    model_id=record.model_id,
                    dimension=record.dimension,
                    created_at=record.created_at,
                    flow_run_id=record.flow_run_id,
                    promoted_at=record.promoted_at,
                    retired_at=record.retired_at,
                    rolled_back_at=record.rolled_back_at,
                    failed_at=record.failed_at,
                    live=live[version_kind] == name,
                    objects=self.live.count_collection(name, version_kind) if count_objects else 0,
                )
            )
        return sorted(found, key=lambda v: (v.kind.value, v.number))

    def mark_failed(self, name: str) -> None:
        """Mark a version whose rebuild did not complete; it is never promoted."""
        self._stamp(name, _kind_of(name), failed_at=timestamp())

    def drop_failed_versions(self, kind: SourceKind) -> list[str]:
        """Delete the versions of `kind` left by failed rebuilds; their names."""
        failed = [v.name for v in self.versions(kind, count_objects=False) if v.failed_at]
        for name in failed:
            self.drop_version(name)
        return failed

    def drop_version(self, name: str) -> None:
        """Delete a version that is not live (an incomplete rebuild, or an old one)."""
        for kind, alias in ALIASES.items():
            if self.live.alias_target(kind) == name:
                raise ConfigError(f"{name} is live behind {alias}; roll back or rebuild first")
        through_election(lambda: self.client.collections.delete(name), f"deleting {name}")

    def _point_alias(self, kind: SourceKind, name: str) -> None:
        """Point the alias of `kind` at `name`; repeatable (a retry finds it done)."""
        alias = ALIASES[kind]
        current = self.live.alias_target(kind)
        if current is None:
            self.client.alias.create(alias_name=alias, target_collection=name)
        elif current != name:
            self.client.alias.update(alias_name=alias, new_target_collection=name)

    def _stamp(self, name: str, kind: SourceKind, **times: str | None) -> None:
        """Set time stamps in a collection's description, keeping the rest of it."""
        record = self.description(name, kind).with_times(**times)
        through_election(
            lambda: self.client.collections.get(name).config.update(description=record.to_text()),
            f"updating the description of {name}",
        )


def _kind_of(name: str) -> SourceKind:
    """The kind a collection holds, from its name (`CustomerRecord_v2` holds customers)."""
    return (
        SourceKind.CUSTOMERS
        if name.startswith(ALIASES[SourceKind.CUSTOMERS])
        else SourceKind.DOCUMENTS
    )
