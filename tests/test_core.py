"""Identity, the sync plan, settings and the sources file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from freshkb.core import ids
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError
from freshkb.core.records import LoadedDocument, LoadFailure, SourceKind, StoredDocument
from freshkb.core.sources import load_sources
from freshkb.store.server import server_env
from freshkb.store.sync import plan_sync


def test_document_id_is_stable_and_independent_of_content():
    assert ids.document_id("kb", "returns.md") == ids.document_id("kb", "returns.md")
    assert ids.document_id("kb", "returns.md") != ids.document_id("other", "returns.md")
    assert ids.document_id("kb", "a/b.md") != ids.document_id("kb", "a_b.md")


def test_content_hash_separates_parts():
    assert ids.content_hash("ab", "c") != ids.content_hash("a", "bc")
    assert ids.content_hash(b"x") == ids.content_hash("x")


def test_tenant_names_are_valid_and_distinct():
    assert ids.tenant_name("noah_brown_6181") == "noah_brown_6181"
    odd = [ids.tenant_name(x) for x in ("a@b.com", "a#b.com", "ü" * 80)]
    assert len(set(odd)) == 3
    assert all(len(t) <= 64 and t.replace("_", "").replace("-", "").isalnum() for t in odd)


def _doc(key: str, text: str) -> LoadedDocument:
    return LoadedDocument(
        source="kb",
        kind=SourceKind.DOCUMENTS,
        document_id=ids.document_id("kb", key),
        key=key,
        title=key,
        content_hash=ids.content_hash(text),
        modified_at=datetime.now(UTC),
        sections=(),
    )


def _stored(doc: LoadedDocument, complete: bool = True, content_hash: str | None = None):
    return StoredDocument(
        document_id=doc.document_id,
        content_hash=doc.content_hash if content_hash is None else content_hash,
        chunk_count=2,
        complete=complete,
    )


def test_plan_sorts_documents_into_new_changed_unchanged_deleted():
    same, edited, fresh = _doc("same.md", "a"), _doc("edited.md", "new"), _doc("fresh.md", "x")
    gone = _doc("gone.md", "old")
    stored = {
        same.document_id: _stored(same),
        edited.document_id: _stored(edited, content_hash=ids.content_hash("old")),
        gone.document_id: _stored(gone),
    }
    plan = plan_sync("kb", [same, edited, fresh], [], stored)
    assert plan.new == (fresh,)
    assert plan.changed == (edited,)
    assert plan.unchanged == (same,)
    assert [d.document_id for d in plan.deleted] == [gone.document_id]
    assert set(plan.previous) == {edited.document_id}


def test_plan_rewrites_a_document_left_incomplete_by_an_interrupted_run():
    doc = _doc("half.md", "a")
    plan = plan_sync("kb", [doc], [], {doc.document_id: _stored(doc, complete=False)})
    assert plan.changed == (doc,)


def test_plan_keeps_a_stored_document_whose_file_failed_to_load():
    broken = _doc("broken.pdf", "was fine")
    stored = {broken.document_id: _stored(broken)}
    plan = plan_sync("kb", [], [LoadFailure("kb", "broken.pdf", "truncated PDF")], stored)
    assert plan.deleted == ()
    assert [d.document_id for d in plan.kept_after_failure] == [broken.document_id]


def test_sources_file_resolves_relative_locations(tmp_path: Path):
    config = tmp_path / "freshkb.yaml"
    config.write_text(
        "sources:\n"
        "  - {name: policies, kind: documents, location: docs, owner: me}\n"
        "  - {name: crm, kind: customers, location: 'sqlite:///crm.db', table: customers,\n"
        "     customer_id: id, owner: crm-team}\n"
    )
    policies, crm = load_sources(config)
    assert policies.location == str(tmp_path / "docs")
    assert crm.is_sql and crm.location == "sqlite:///crm.db"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sources:\n  - {name: x, kind: customers, location: d}\n", "customer_id"),
        ("sources:\n  - {name: x, kind: docs, location: d}\n", "kind"),
        (
            "sources:\n  - {name: x, kind: documents, location: a}\n"
            "  - {name: x, kind: documents, location: b}\n",
            "unique",
        ),
        ("sources: [\n", "not valid YAML"),
    ],
)
def test_invalid_sources_file_names_the_file_and_the_problem(tmp_path: Path, content, message):
    config = tmp_path / "freshkb.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_sources(config)
    assert str(config) in str(info.value)


def test_missing_config_file_says_how_to_fix(tmp_path: Path):
    with pytest.raises(ConfigError, match="FRESHKB_CONFIG"):
        load_sources(tmp_path / "nope.yaml")


def test_settings_read_environment_over_config_file(tmp_path: Path, monkeypatch):
    config = tmp_path / "freshkb.yaml"
    config.write_text("settings:\n  embedding_batch_size: 8\n  weaviate_http_port: 9000\n")
    monkeypatch.setenv("FRESHKB_CONFIG", str(config))
    monkeypatch.setenv("FRESHKB_WEAVIATE_HTTP_PORT", "9100")
    monkeypatch.setenv("WEAVIATE_API_KEY", "s3cret")
    settings = Settings()
    assert settings.embedding_batch_size == 8
    assert settings.weaviate_http_port == 9100
    assert settings.weaviate_api_key is not None
    assert "s3cret" not in repr(settings)


def test_managed_server_binds_loopback_only_with_ports_derived_from_http_port():
    env = server_env(Settings(weaviate_http_port=18080, weaviate_grpc_port=15051))
    assert env["CLUSTER_BIND_ADDR"] == "127.0.0.1"
    assert env["ENABLE_MODULES"] == "" and env["DISABLE_TELEMETRY"] == "true"
    ports = [
        env[k]
        for k in (
            "GRPC_PORT",
            "CLUSTER_GOSSIP_BIND_PORT",
            "CLUSTER_DATA_BIND_PORT",
            "RAFT_PORT",
            "RAFT_INTERNAL_RPC_PORT",
        )
    ]
    assert len(set(ports)) == 5
    assert "8080" not in ports and "50051" not in ports


def test_cli_errors_keep_bracketed_text_of_paths_and_reasons(tmp_path):
    from typer.testing import CliRunner

    from freshkb.cli import app

    missing = tmp_path / "[eu-west]" / "freshkb.yaml"
    result = CliRunner().invoke(app, ["sources", "--config", str(missing)])
    assert result.exit_code == 2
    # Rich markup used to swallow "[eu-west]" and print a path that does not exist.
    assert "[eu-west]" in result.output.replace("\n", ""), result.output
