"""Moving the live index to another embedding model's vectors when `freshkb promote` changes
the model: each declared kind rebuilt (as `freshkb rebuild`), or its alias moved back (as
`freshkb rollback`) when a promotion is rolled back.

The rebuild and rollback flows read the active configuration, so a rebuild started right after
an activation builds with the model just activated; each result is checked against that model.
"""

from __future__ import annotations

from freshkb.cli.output import err
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, FreshkbError
from freshkb.core.records import SourceKind


def _declared_kinds(settings: Settings) -> list[SourceKind]:
    from freshkb.core.sources import load_sources

    return sorted({source.kind for source in load_sources(settings.config_file)})


class LiveIndexSwitch:
    """The managed Weaviate's aliases, moved by the rebuild and rollback flows (which read the
    active configuration, so they build with the model just activated)."""

    def rebuild(self, settings: Settings, model: str) -> list[str]:
        """Rebuild every declared kind with `model`; kinds already switched go back on failure."""
        from freshkb.embeddings.embedder import resolve_model
        from freshkb.flows.versions import rollback_collection
        from freshkb.store import server

        server.ensure_running(settings, announce=err.print)
        expected, switched, notes = resolve_model(model)[1], [], []
        try:
            for kind in _declared_kinds(settings):
                notes.append(_rebuild_kind(settings, kind, expected))
                switched.append(kind)
        except FreshkbError:
            for kind in switched:
                rollback_collection(settings, kind)
            raise
        return notes

    def restore(self, settings: Settings, model: str) -> list[str]:
        """Every kind's alias back one version; a kind whose previous version holds another
        model is rebuilt instead."""
        from freshkb.embeddings.embedder import base_model_id, resolve_model
        from freshkb.flows.versions import rollback_collection
        from freshkb.store import server

        server.ensure_running(settings, announce=err.print)
        expected, notes = resolve_model(model)[1], []
        for kind in _declared_kinds(settings):
            restored = rollback_collection(settings, kind).restored
            if base_model_id(restored.model_id or "") == expected:
                notes.append(f"{kind.value}: answers read {restored.name} (model {expected})")
            else:
                notes.append(_rebuild_kind(settings, kind, expected))
        return notes


def _rebuild_kind(settings: Settings, kind: SourceKind, expected: str) -> str:
    """`freshkb rebuild --kind KIND`, checked to have switched to a version of `expected`."""
    from freshkb.cli.prefect_runs import explained_prefect_failures
    from freshkb.embeddings.embedder import base_model_id
    from freshkb.flows.rebuild import rebuild_index
    from freshkb.flows.versions import rollback_collection

    with explained_prefect_failures():
        summary = rebuild_index(kind.value, config_file=str(settings.config_file))
    if not summary.promoted:
        raise ConfigError(f"rebuild of {kind.value} failed: {summary.error}")
    if base_model_id(summary.model_id or "") != expected:
        rollback_collection(settings, kind)
        raise ConfigError(
            f"rebuild of {kind.value} used {summary.model_id}, not {expected} (do the flows "
            "read the active configuration?); switched back"
        )
    return f"{kind.value}: rebuilt as {summary.version} (model {expected})"
