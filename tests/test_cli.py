"""The command line: its entry points, the managed-server command groups, `--config` passed
explicitly, and a rollback that moves the alias and the ledger in one call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from freshkb.cli import app
from freshkb.cli.servers import ManagedServer, server_commands
from freshkb.core.records import SourceKind


@pytest.mark.parametrize("module", ["freshkb", "freshkb.cli"])
def test_python_dash_m_runs_the_same_cli(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("ingest", "rollback", "serve", "weaviate", "llm", "escalations"):
        assert command in result.stdout


@dataclass(frozen=True)
class FakeState:
    """A server status as the managed-server commands see one."""

    running: bool
    where: str


def fake_server(running: bool, calls: list[str]) -> ManagedServer[FakeState]:
    """A managed server whose operations record their calls."""

    def up() -> FakeState:
        calls.append("up")
        return FakeState(True, "here")

    def down() -> bool:
        calls.append("down")
        return running

    return ManagedServer[FakeState](
        help="A fake server.",
        up=up,
        down=down,
        status=lambda: FakeState(running, "here"),
        show=lambda state: print(f"shown running={state.running}"),
        up_help="Start it.",
        down_help="Stop it.",
        status_help="Is it running?",
    )


def test_server_group_has_up_down_status_with_json_and_exit_codes() -> None:
    calls: list[str] = []
    group = server_commands(fake_server(running=False, calls=calls))
    runner = CliRunner()
    status = runner.invoke(group, ["status", "--json"])
    assert status.exit_code == 1, "not running exits 1"
    assert json.loads(status.stdout) == {"running": False, "where": "here"}
    assert runner.invoke(group, ["down"]).stdout.strip() == "not running"
    up = runner.invoke(group, ["up"])
    assert up.exit_code == 0 and up.stdout.strip() == "shown running=True"
    assert calls == ["down", "up"]
    running = server_commands(fake_server(running=True, calls=[]))
    assert runner.invoke(running, ["status"]).exit_code == 0
    assert json.loads(runner.invoke(running, ["down", "--json"]).stdout) == {"stopped": True}
    assert "Is it running?" in runner.invoke(group, ["--help"]).stdout


def test_config_option_is_passed_explicitly_not_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRESHKB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FRESHKB_CONFIG", raising=False)
    config = tmp_path / "elsewhere.yaml"
    config.write_text(
        json.dumps({"sources": [{"name": "kb", "kind": "documents", "location": "docs"}]})
    )
    listed = CliRunner().invoke(app, ["sources", "--config", str(config), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [s["location"] for s in json.loads(listed.stdout)] == [str(tmp_path / "docs")]
    status = CliRunner().invoke(app, ["status", "--config", str(config), "--json"])
    assert status.exit_code == 1, "a source never synced is not fresh"
    assert json.loads(status.stdout)[0]["state"] == "never synced"
    assert "FRESHKB_CONFIG" not in os.environ


def test_ingest_needs_exactly_one_way_of_naming_sources() -> None:
    result = CliRunner().invoke(app, ["ingest", "kb", "--all"])
    assert result.exit_code == 2
    assert "give exactly one of" in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_rollback_moves_the_alias_and_caps_the_ledger_in_one_call(
    store: Any, prefect_harness: Any, corpus_copy: Path
) -> None:
    from test_ingest_e2e import documents_source, write_policies

    from freshkb.core.config import Settings
    from freshkb.flows.ingest import ingest_source
    from freshkb.flows.rebuild import rebuild_index
    from freshkb.flows.versions import rollback_collection
    from freshkb.store.ledger import Ledger

    write_policies(corpus_copy)
    source = documents_source(corpus_copy, "rollback-flow-kb")
    assert ingest_source(source_config=source).completed
    rebuilt = rebuild_index("documents", sources=[source])
    assert rebuilt.promoted, rebuilt.error

    settings = Settings()
    done = rollback_collection(settings, SourceKind.DOCUMENTS)

    assert done.to_dict() == {"kind": "documents", "from": rebuilt.version, "to": "PolicyChunk_v1"}
    assert done.restored.retired_at is not None
    assert done.data_as_of == done.restored.retired_at
    ledger = Ledger(settings.ledger_database_url)
    try:
        state = ledger.state("rollback-flow-kb")
    finally:
        ledger.close()
    assert state is not None and state.last_success_at is not None
    retired = datetime.fromisoformat(done.restored.retired_at.replace("Z", "+00:00"))
    assert state.last_success_at <= retired, "the ledger no longer claims the rebuilt data"


def test_cli_gives_prefect_two_minutes_to_start_unless_told_otherwise() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    }
    probe = (
        "import freshkb.cli.app, os; "
        "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; "
        "print(s.value())"
    )
    default = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert default.stdout.strip() == "120", default.stderr
    told = subprocess.run(
        [sys.executable, "-c", probe],
        env=env | {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert told.stdout.strip() == "300", told.stderr


CLI = [sys.executable, "-m", "freshkb.cli"]


@pytest.mark.integration
def test_prefect_that_cannot_start_says_what_to_do_and_ingests_nothing(
    weaviate_settings: Any, store: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "returns.md").write_text("# Returns\n\nReturns are accepted within 30 days.\n")
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "1"  # far too short to start
    result = subprocess.run(
        [*CLI, "ingest", "--source", "no-prefect", "--kind", "documents", "--path", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "temporary API server did not start within 1s" in result.stderr
    assert "PREFECT_API_URL" in result.stderr and "nothing was ingested" in result.stderr
    assert store.count(SourceKind.DOCUMENTS, "no-prefect") == 0
