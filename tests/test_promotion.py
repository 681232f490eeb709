"""A change of LLM, prompt or embedding model becomes active only through the SLO gate: the
active configuration and its audit log, the settings the answer service runs, and `freshkb
promote` refusing, promoting, forcing and rolling back."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from scripted_llm import scripted_llm_server
from typer.testing import CliRunner

from freshkb.cli import promotion
from freshkb.cli.promotion import GateInputs, promote_change, roll_back
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, TransientError
from freshkb.store.active_config import (
    AnswerPathConfig,
    EvalSummary,
    PromotionAttempt,
    PromotionLedger,
    SloResult,
    active_settings,
    apply_active_config,
)

PASSING = EvalSummary(
    True, (SloResult("hallucination_rate", "max", 0.05, 0.0, True),), {"hit_at_5": 0.9}, "c"
)
FAILING = EvalSummary(
    False,
    (
        SloResult("hallucination_rate", "max", 0.05, 0.6, False),
        SloResult("page_hit_at_5", "min", 0.7, 0.9, True),
    ),
    {"hallucination_rate": 0.6},
    "c",
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a throw-away operational database, with no config file."""
    return Settings(data_dir=tmp_path / "data", config_file=tmp_path / "absent.yaml")


@pytest.fixture
def ledger(settings: Settings):
    opened = PromotionLedger(settings.ledger_database_url)
    yield opened
    opened.close()


class ScriptedGate:
    """Evaluation stand-in for the decision logic: a verdict per LLM model, and what it saw."""

    def __init__(self, verdicts: dict[str, EvalSummary]):
        self.verdicts = verdicts
        self.seen: list[tuple[AnswerPathConfig, Settings]] = []

    def __call__(self, candidate: AnswerPathConfig, _inputs: GateInputs, run: Settings):
        self.seen.append((candidate, run))
        return self.verdicts[candidate.llm_model]


class RecordingIndex:
    """Index switch stand-in: records what it was asked, fails when told to."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    def rebuild(self, _settings: Settings, model: str) -> list[str]:
        self.calls.append(("rebuild", model))
        if self.fail:
            raise TransientError("Weaviate unavailable")
        return [f"documents: rebuilt with {model}"]

    def restore(self, _settings: Settings, model: str) -> list[str]:
        self.calls.append(("restore", model))
        return [f"documents: back to {model}"]


def _promote(settings, ledger, gate, index=None, reason=None, **changes):
    return promote_change(
        changes, GateInputs(Path(".")), settings, ledger, gate, index or RecordingIndex(), reason
    )


@pytest.mark.timeout(30)
def test_active_configuration_and_audit_round_trip(settings: Settings, ledger) -> None:
    configured = AnswerPathConfig.from_settings(settings)
    candidate = replace(configured, llm_model="support-llm", prompt_version="answer-v2")
    refused = PromotionAttempt("ana", "promote", "refused", configured, candidate, FAILING)
    assert ledger.record(refused) is None
    assert ledger.active() is None  # a refused attempt activates nothing

    forced = replace(refused, outcome="forced", reason="vendor outage, old model gone")
    active = ledger.record(forced)
    assert active is not None and active == ledger.active()
    assert (active.config, active.activated_by, active.outcome) == (candidate, "ana", "forced")
    assert active.eval_summary == FAILING
    baseline = ledger.previous()
    assert baseline is not None and baseline.config == configured
    assert baseline.outcome == "baseline"

    newest, oldest = ledger.attempts()
    assert (newest.outcome, oldest.outcome) == ("forced", "refused")
    assert newest.reason == "vendor outage, old model gone"
    assert newest.failed_slos == ["hallucination_rate: measured 0.6, max 0.05"]
    assert (newest.from_config, newest.to_config) == (configured, candidate)
    assert json.loads(json.dumps(newest.to_dict()))["eval_passed"] is False


@pytest.mark.timeout(30)
def test_settings_are_used_as_they_are_until_something_is_promoted(settings: Settings, ledger):
    assert active_settings(settings) is settings
    candidate = replace(
        AnswerPathConfig.from_settings(settings),
        llm_base_url="http://gpu-host:8000/v1",
        llm_model="support-llm",
    )
    before = AnswerPathConfig.from_settings(settings)
    ledger.record(PromotionAttempt("ana", "promote", "promoted", before, candidate, PASSING))
    served = active_settings(settings)
    assert AnswerPathConfig.from_settings(served) == candidate
    assert served.data_dir == settings.data_dir  # everything else as configured
    assert settings.llm_model != "support-llm"  # the original is not touched
    assert apply_active_config(settings, None) is settings


@pytest.mark.timeout(30)
def test_a_failing_change_is_refused_and_changes_nothing(settings: Settings, ledger) -> None:
    gate = ScriptedGate({"makes-things-up": FAILING})
    result = _promote(settings, ledger, gate, llm_model="makes-things-up")
    assert result.exit_code == 1 and result.attempt.outcome == "refused"
    assert ledger.active() is None
    candidate, run_settings = gate.seen[0]
    assert run_settings.llm_model == candidate.llm_model == "makes-things-up"
    assert ledger.attempts()[0].failed_slos == ["hallucination_rate: measured 0.6, max 0.05"]


@pytest.mark.timeout(30)
def test_a_passing_change_is_promoted_and_rollback_restores_the_one_before(
    settings: Settings, ledger
) -> None:
    gate = ScriptedGate({"v2": PASSING, "v3": PASSING})
    assert _promote(settings, ledger, gate, llm_model="v2").exit_code == 0
    assert _promote(settings, ledger, gate, llm_model="v3").attempt.from_config.llm_model == "v2"
    assert ledger.active().config.llm_model == "v3"

    index = RecordingIndex()
    back = roll_back(settings, ledger, index)
    assert back.exit_code == 0 and back.active is not None
    assert back.active.config.llm_model == "v2"
    assert back.active.eval_summary == PASSING  # the verdict that allowed it, kept
    assert index.calls == []  # same embedding model: the index stays
    # A second rollback walks further back (to the configured settings), not forth again.
    assert roll_back(settings, ledger, index).active.config.llm_model == settings.llm_model
    with pytest.raises(ConfigError, match="no previous configuration"):
        roll_back(settings, ledger, index)
    outcomes = [a.outcome for a in ledger.attempts()]
    assert outcomes == ["rolled_back", "rolled_back", "promoted", "promoted"]


@pytest.mark.timeout(30)
def test_force_activates_despite_a_failed_slo_and_records_the_override(settings, ledger):
    gate = ScriptedGate({"makes-things-up": FAILING})
    result = _promote(settings, ledger, gate, reason="incident 42", llm_model="makes-things-up")
    assert result.exit_code == 0 and result.attempt.outcome == "forced"
    assert ledger.active().config.llm_model == "makes-things-up"
    audit = ledger.attempts()[0]
    assert (audit.outcome, audit.reason) == ("forced", "incident 42")
    assert audit.failed_slos


@pytest.mark.timeout(30)
def test_a_missing_prompt_version_is_refused_naming_its_file(settings, ledger) -> None:
    gate = ScriptedGate({})
    result = _promote(settings, ledger, gate, prompt_version="answer-v99")
    assert result.exit_code == 2 and result.attempt.outcome == "invalid"
    assert "serving/data/prompts/answer-v99.txt does not exist" in result.attempt.detail
    assert "answer-v1" in result.attempt.detail  # the versions there are named
    assert gate.seen == [] and ledger.active() is None  # never evaluated, nothing active
    traversal = _promote(settings, ledger, gate, prompt_version="../../config")
    assert traversal.attempt.outcome == "invalid"


@pytest.mark.timeout(180)  # loading torch and the model on a busy machine
def test_an_embedding_change_rebuilds_the_index_and_a_failed_rebuild_reverts(settings, ledger):
    gate = ScriptedGate({settings.llm_model: PASSING})
    # The bundled model under its path: another model id, and it loads offline.
    from freshkb.embeddings.embedder import resolve_model

    path = resolve_model("all-MiniLM-L6-v2")[0]
    index = RecordingIndex(fail=True)
    result = _promote(settings, ledger, gate, index, embedding_model=path)
    assert result.attempt.outcome == "reverted" and result.exit_code == 2
    assert "Weaviate unavailable" in result.attempt.detail
    assert ledger.active().config.embedding_model == settings.embedding_model
    assert [a.outcome for a in ledger.attempts()] == ["reverted", "promoted"]

    index = RecordingIndex()
    done = _promote(settings, ledger, gate, index, embedding_model=path)
    assert done.exit_code == 0 and done.notes == (f"documents: rebuilt with {path}",)
    roll_back(settings, ledger, index)
    assert index.calls == [("rebuild", path), ("restore", settings.embedding_model)]


@pytest.mark.timeout(60)
def test_cli_refuses_bad_options_and_a_missing_prompt_version_with_exit_2(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRESHKB_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("FRESHKB_CONFIG", str(settings.config_file))
    app = typer.Typer()
    app.command("promote")(promotion.promote)
    app.command("promotions")(promotion.promotions)
    runner = CliRunner()
    cases = str(tmp_path)

    forced = runner.invoke(app, ["promote", "--llm-model", "x", "--cases", cases, "--force"])
    assert forced.exit_code == 2 and "--force needs --reason" in forced.output
    no_cases = runner.invoke(app, ["promote", "--llm-model", "x"])
    assert no_cases.exit_code == 2 and "--cases DIR" in no_cases.output
    missing = runner.invoke(
        app, ["promote", "--prompt-version", "answer-v99", "--cases", cases, "--json"]
    )
    assert missing.exit_code == 2
    assert json.loads(missing.stdout)["detail"].count("answer-v99.txt does not exist") == 1
    rollback = runner.invoke(app, ["promote", "--rollback"])
    assert rollback.exit_code == 2 and "no previous configuration" in rollback.output

    listed = runner.invoke(app, ["promotions", "--json"])
    assert listed.exit_code == 0
    log = json.loads(listed.stdout)
    assert log["active"] is None
    assert [a["outcome"] for a in log["attempts"]] == ["invalid"]


# -- the gate end to end: the real evaluation harness, a scripted LLM ---------------------------

REPO = Path(__file__).resolve().parents[1]
LLM_PORT = int(os.environ.get("FRESHKB_TEST_LLM_PORT", "18091"))
# The scripted LLM and the throw-away Weaviate the harness starts (cluster ports HTTP + 100..103).
SCRIPTED_PORT, EVAL_HTTP, EVAL_GRPC = LLM_PORT + 27, LLM_PORT + 28, LLM_PORT + 29


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_promote_refuses_a_model_that_ignores_the_passages_and_promotes_a_grounded_one(
    prefect_harness: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRESHKB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FRESHKB_CONFIG", str(tmp_path / "absent.yaml"))
    # The repository's targets, but latency: on a machine shared with other test runs a grounded
    # answer has missed a 2.5 s p50; what this test is about is quality, not this machine's speed.
    slo = yaml.safe_load((REPO / "slo.yaml").read_text())
    for name in ("answer_latency_p50_ms", "answer_latency_p95_ms"):
        slo["targets"][name] = {"max": 600_000}
    (tmp_path / "slo.yaml").write_text(yaml.safe_dump(slo))
    monkeypatch.setenv("FRESHKB_SLO_FILE", str(tmp_path / "slo.yaml"))
    app = typer.Typer()
    app.command("promote")(promotion.promote)
    app.command("promotions")(promotion.promotions)
    runner = CliRunner()
    gate = ["--cases", str(REPO / "tests" / "eval_cases"), "--corpus", str(REPO / "sample")]
    gate += ["--index-dir", str(tmp_path / "index"), "--json"]
    gate += ["--weaviate-http-port", str(EVAL_HTTP), "--weaviate-grpc-port", str(EVAL_GRPC)]

    with scripted_llm_server(SCRIPTED_PORT) as url:
        # "insufficient" ignores the passages it is given and declines every question.
        broken = runner.invoke(
            app, ["promote", "--llm-url", url, "--llm-model", "insufficient", *gate]
        )
        refused = json.loads(broken.stdout)
        assert broken.exit_code == 1, refused["detail"]
        assert refused["outcome"] == "refused" and refused["eval_passed"] is False
        assert any(s.startswith("false_refusal_rate") for s in refused["failed_slos"])
        assert refused["active"] is None  # the configured settings still rule

        good = runner.invoke(app, ["promote", "--llm-url", url, "--llm-model", "grounded", *gate])
        promoted = json.loads(good.stdout)
        assert good.exit_code == 0, (promoted["failed_slos"], promoted["detail"])
        assert promoted["outcome"] == "promoted" and promoted["failed_slos"] == []
        assert promoted["active"]["config"]["llm_model"] == "grounded"
        assert promoted["active"]["eval_summary"]["metrics"]["page_hit_at_5"] == 1.0

    assert active_settings(Settings()).llm_base_url == url  # what the answer service runs
    back = runner.invoke(app, ["promote", "--rollback", "--json"])
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["active"]["config"]["llm_model"] == Settings().llm_model
    listed = json.loads(runner.invoke(app, ["promotions", "--json"]).stdout)
    assert [a["outcome"] for a in listed["attempts"]] == ["rolled_back", "promoted", "refused"]
