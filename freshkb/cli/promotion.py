"""`freshkb promote` and `freshkb promotions`: a change of LLM endpoint or model, prompt version
or embedding model becomes active only through the SLO gate.

`promote` builds the candidate (the active configuration plus the changes asked for), checks
that it can run at all (the prompt version's file exists, the embedding model loads), runs the
evaluation on it (`freshkb.evaluation.harness`, on a throw-away index built with the
candidate's embedding model) and makes it active only if every SLO in slo.yaml passes. A
failed SLO exits 1 and changes nothing, unless `--force --reason TEXT` overrides it; every
attempt, refused or not, goes to the promotion audit log (store/active_config.py).

An embedding-model change needs an index of that model's vectors: once the gate passes, promote
activates it and rebuilds each declared kind (as `freshkb rebuild`: a new version, the alias
switched only when complete); if a rebuild fails, switched kinds go back and the activation is
reverted. A running answer service keeps its configuration until restarted.

`promote --rollback` returns to the configuration the active one replaced without re-running
the evaluation: it passed the gate (or was forced, on record) when promoted, and a way out of a
bad change in production must not wait for, or be blocked by, a slow evaluation. An embedding
model changed back moves each kind's alias back (`freshkb rollback`), or rebuilds a kind whose
previous version holds another model.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.markup import escape
from rich.table import Table

from freshkb.cli.index_switch import LiveIndexSwitch
from freshkb.cli.options import ConfigOption, JsonFlag, settings_for
from freshkb.cli.output import err, fail, out, print_json, wide_console
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError, FreshkbError
from freshkb.store.active_config import (
    ActiveConfig,
    AnswerPathConfig,
    EvalSummary,
    Outcome,
    PromotionAttempt,
    PromotionLedger,
    SloResult,
    apply_active_config,
)

PROMPT_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class GateInputs:
    """What the gate evaluates a candidate on."""

    cases_dir: Path
    corpus: Path | None = None
    limit: int | None = None
    index_dir: Path | None = None  # keep the throw-away index here, reused next time
    weaviate_ports: tuple[int, int] | None = None  # the throw-away Weaviate's HTTP, gRPC


Evaluate = Callable[[AnswerPathConfig, GateInputs, Settings], EvalSummary]


class IndexSwitch(Protocol):
    """Moves the live index to another embedding model's vectors."""

    def rebuild(self, settings: Settings, model: str) -> list[str]:
        """Rebuild every declared kind with `model`; what was done, one line each."""
        ...

    def restore(self, settings: Settings, model: str) -> list[str]:
        """Point every kind back at its previous version, which must hold `model`'s vectors."""
        ...


@dataclass(frozen=True)
class PromotionResult:
    """What `promote` did: the audit line, the configuration now active, notes for the operator."""

    attempt: PromotionAttempt
    active: ActiveConfig | None
    notes: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0 when the candidate became active, 1 when the gate refused it, 2 for errors."""
        codes = {"promoted": 0, "forced": 0, "rolled_back": 0, "refused": 1}
        return codes.get(self.attempt.outcome, 2)

    def to_dict(self) -> dict[str, object]:
        """Plain, JSON-serialisable form."""
        return {
            **self.attempt.to_dict(),
            "active": self.active.to_dict() if self.active else None,
            "notes": list(self.notes),
        }


def operator_name() -> str:
    """Who is promoting: the login name ($USER, $LOGNAME)."""
    try:
        return getpass.getuser()
    except OSError:
        return "unknown"


def prompt_file(version: str) -> Path:
    """Where the system prompt of `version` is read from (serving/data/prompts)."""
    return Path(str(files("freshkb.serving").joinpath("data", "prompts", f"{version}.txt")))


def validate_candidate(
    candidate: AnswerPathConfig, current: AnswerPathConfig, settings: Settings
) -> None:
    """Refuse a candidate that cannot run at all: an unreachable kind of URL, a missing prompt
    file, an embedding model that does not load (ConfigError naming what and the fix)."""
    if not candidate.llm_base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"LLM URL {candidate.llm_base_url!r} is not an http(s) URL; give the base URL of an "
            "OpenAI-compatible server, e.g. http://gpu-host:8000/v1"
        )
    version = candidate.prompt_version
    path = prompt_file(version)
    if not PROMPT_VERSION_NAME.match(version) or not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.txt"))
        raise ConfigError(
            f"prompt version {version!r}: {path} does not exist; add the prompt as that file "
            f"(and to the package) or pick one of: {', '.join(known) or 'none'}"
        )
    if candidate.embedding_model != current.embedding_model:
        from freshkb.embeddings.embedder import get_embedder

        # Loaded as the evaluation will load it (cached per process); ConfigError if it cannot.
        get_embedder(
            candidate.embedding_model, settings.embedding_device, settings.embedding_batch_size
        )


def promote_change(
    changes: dict[str, str],
    inputs: GateInputs,
    settings: Settings,
    ledger: PromotionLedger,
    evaluate: Evaluate,
    index: IndexSwitch,
    force_reason: str | None = None,
) -> PromotionResult:
    """Evaluate the active configuration with `changes` and activate it if every SLO passes
    (or `force_reason` is given); every attempt is recorded."""
    current = AnswerPathConfig.from_settings(apply_active_config(settings, ledger.active()))
    candidate = replace(current, **changes)
    attempt = PromotionAttempt(
        operator_name(), "promote", "invalid", current, candidate, reason=force_reason or ""
    )
    try:
        validate_candidate(candidate, current, settings)
        summary = evaluate(candidate, inputs, settings.model_copy(update=asdict(candidate)))
    except FreshkbError as exc:
        failure: Outcome = "invalid" if isinstance(exc, ConfigError) else "failed"
        attempt = replace(attempt, outcome=failure, detail=str(exc))
        ledger.record(attempt)
        return PromotionResult(attempt, ledger.active())
    outcome: Outcome = "promoted" if summary.passed else "forced" if force_reason else "refused"
    attempt = replace(attempt, outcome=outcome, eval_summary=summary)
    active = ledger.record(attempt)
    if active is None or candidate.embedding_model == current.embedding_model:
        return PromotionResult(attempt, active or ledger.active())
    try:
        notes = index.rebuild(settings, candidate.embedding_model)
    except FreshkbError as exc:
        detail = f"index rebuild with {candidate.embedding_model} failed, activation undone: {exc}"
        ledger.restore(attempt.operator, "reverted", attempt.reason, detail)
        return PromotionResult(replace(attempt, outcome="reverted", detail=detail), ledger.active())
    return PromotionResult(attempt, active, tuple(notes))


def roll_back(settings: Settings, ledger: PromotionLedger, index: IndexSwitch) -> PromotionResult:
    """Return to the configuration the active one replaced (no evaluation: see the module)."""
    active, previous = ledger.active(), ledger.previous()
    restored = ledger.restore(operator_name())  # ConfigError when there is nothing to return to
    notes: tuple[str, ...] = ()
    if active and previous and previous.config.embedding_model != active.config.embedding_model:
        notes = tuple(index.restore(settings, previous.config.embedding_model))
    return PromotionResult(ledger.attempts(limit=1)[0], restored, notes)


def evaluate_with_harness(
    candidate: AnswerPathConfig, inputs: GateInputs, settings: Settings
) -> EvalSummary:
    """The SLO gate's verdict on `candidate` from the evaluation harness."""
    from freshkb.evaluation.harness import EvalOptions, run_evaluation

    options = EvalOptions(
        cases_dir=inputs.cases_dir,
        corpus=inputs.corpus,
        llm=candidate.llm_base_url,
        llm_model=candidate.llm_model,
        prompt_version=candidate.prompt_version,
        embedding_model=candidate.embedding_model,
        limit=inputs.limit,
        index_dir=inputs.index_dir,
    )
    if inputs.weaviate_ports:
        options = replace(options, weaviate_ports=inputs.weaviate_ports)
    result = run_evaluation(options, settings)
    checks = tuple(
        SloResult(c.name, c.bound, float(c.target), _number(c.measured), c.passed)
        for c in result.checks
    )
    metrics = {name: float(v) for name, v in result.metrics.items() if _number(v) is not None}
    return EvalSummary(bool(result.passed), checks, metrics, str(inputs.cases_dir))


def _number(value: object) -> float | None:
    """A measured figure as a float; None for anything else (not measured, a label)."""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if numeric else None  # type: ignore[arg-type]


def promote(  # noqa: PLR0913
    llm_url: Annotated[str | None, typer.Option("--llm-url", help="LLM base URL.")] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="LLM model name.")] = None,
    prompt_version: Annotated[
        str | None, typer.Option("--prompt-version", help="serving/data/prompts/<V>.txt")
    ] = None,
    embedding_model: Annotated[
        str | None, typer.Option("--embedding-model", help="Rebuilds the index if promoted.")
    ] = None,
    cases: Annotated[Path | None, typer.Option("--cases", help="Eval cases directory.")] = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Corpus the cases need.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most N cases per kind.")] = None,
    index_dir: Annotated[
        Path | None, typer.Option("--index-dir", help="Keep the eval index here, reused.")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--weaviate-http-port", help="Eval Weaviate's HTTP port.")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option("--weaviate-grpc-port", help="Eval Weaviate's gRPC port.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Activate despite failed SLOs.")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, with --force.")] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Return to the previous configuration.")
    ] = False,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Make a change of LLM, prompt or embedding model active only if it passes every SLO."""
    fields = ("llm_base_url", "llm_model", "prompt_version", "embedding_model")
    given = (llm_url, llm_model, prompt_version, embedding_model)
    changes = {name: value for name, value in zip(fields, given, strict=True) if value is not None}
    try:
        _check_options(changes, cases, force, reason, rollback)
        settings = settings_for(config)
        ledger = PromotionLedger(settings.ledger_database_url)
    except FreshkbError as exc:
        raise fail(exc) from exc
    try:
        if rollback:
            result = roll_back(settings, ledger, LiveIndexSwitch())
        else:
            assert cases is not None
            ports = (http_port, grpc_port) if http_port and grpc_port else None
            inputs = GateInputs(cases, corpus, limit, index_dir, ports)
            result = promote_change(
                changes, inputs, settings, ledger, evaluate_with_harness, LiveIndexSwitch(),
                force_reason=reason if force else None,
            )  # fmt: skip
    except FreshkbError as exc:
        raise fail(exc) from exc
    finally:
        ledger.close()
    _show(result, json_out)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _check_options(
    changes: dict[str, str], cases: Path | None, force: bool, reason: str | None, rollback: bool
) -> None:
    if rollback and (changes or force):
        raise ConfigError("--rollback takes no changes and no --force: give it alone")
    if force and not (reason or "").strip():
        raise ConfigError("--force needs --reason TEXT: the override is recorded with it")
    if not rollback and cases is None:
        raise ConfigError(
            "the gate needs eval cases: give --cases DIR (e.g. --cases ../shared/eval/dev)"
        )
    if cases is not None and not cases.is_dir():
        raise ConfigError(f"{cases}: no such cases directory; give --cases DIR")


def _show(result: PromotionResult, json_out: bool) -> None:
    """The gate's checks, then what happened and what to do next."""
    if json_out:
        print_json(result.to_dict())
        return
    attempt = result.attempt
    if attempt.eval_summary is not None:
        wide_console().print(_checks_table(attempt.eval_summary))
    change = escape(attempt.to_config.describe_changes(attempt.from_config))
    failed = escape("; ".join(attempt.failed_slos))
    lines = {
        "promoted": f"[green]promoted[/] ({change})",
        "forced": f"[yellow]forced[/] despite failed SLOs ({failed}); reason on record: "
        f"{escape(attempt.reason)}",
        "refused": f"[red]refused[/]: failed SLOs: {failed}; the active configuration is unchanged",
        "rolled_back": f"[green]rolled back[/] ({change}); not re-evaluated: it passed the gate "
        "(or was forced, on record) when it was promoted",
    }
    line = lines.get(attempt.outcome, f"[red]{attempt.outcome}[/]: {escape(attempt.detail)}")
    (out if result.exit_code < 2 else err).print(line, highlight=False)
    for note in result.notes:
        out.print(f"  {escape(note)}", highlight=False)
    if attempt.outcome in ("promoted", "forced", "rolled_back"):
        out.print("restart the answer service (`freshkb serve`) to serve it")


def _checks_table(summary: EvalSummary) -> Table:
    table = Table("SLO", "target", "measured", "result", title="SLO gate", title_justify="left")
    for check in summary.checks:
        measured = "not measured" if check.measured is None else f"{check.measured:.4g}"
        verdict = "[green]PASS[/]" if check.passed else "[red]FAIL[/]"
        verdict = "not measured" if check.passed is None else verdict
        table.add_row(check.name, f"{check.bound} {check.target:.4g}", measured, verdict)
    return table


def promotions(
    limit: Annotated[int, typer.Option("--limit", help="Audit lines to show.")] = 20,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """The active configuration of the answer path and the promotion audit log."""
    try:
        settings = settings_for(config)
        ledger = PromotionLedger(settings.ledger_database_url)
    except FreshkbError as exc:
        raise fail(exc) from exc
    try:
        active, attempts = ledger.active(), ledger.attempts(limit)
    finally:
        ledger.close()
    configured = AnswerPathConfig.from_settings(settings)
    if json_out:
        listed = [attempt.to_dict() for attempt in attempts]
        active_dict = active.to_dict() if active else None
        print_json({"active": active_dict, "configured": asdict(configured), "attempts": listed})
        return
    current = active.config if active else configured
    how = (
        f"{active.outcome} by {active.activated_by} at {active.activated_at:%Y-%m-%d %H:%M}"
        if active
        else "nothing promoted yet: the configured settings"
    )
    out.print(f"active ({escape(how)}):", highlight=False)
    for name, value in asdict(current).items():
        out.print(f"  {name}: {escape(value)}", highlight=False)
    table = Table("time", "operator", "action", "outcome", "change", "failed SLOs", "reason")
    for attempt in attempts:
        cells = (
            f"{attempt.at:%Y-%m-%d %H:%M:%S}",
            attempt.operator,
            attempt.action,
            attempt.outcome,
            attempt.to_config.describe_changes(attempt.from_config),
            "; ".join(attempt.failed_slos) or "-",
            attempt.reason or attempt.detail or "-",
        )
        table.add_row(*map(escape, cells))
    wide_console().print(table)
