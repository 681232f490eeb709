"""Commands that read the answer log: one answer with what joins it, and the projected cost."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from freshkb.cli.options import ConfigOption, JsonFlag, settings_for
from freshkb.cli.output import err, fail, out, print_json
from freshkb.core.errors import ConfigError, FreshkbError

if TYPE_CHECKING:
    from freshkb.evaluation.slo import SloCheck, SloTargets
    from freshkb.serving.answer_log import AnswerDetail
    from freshkb.serving.costs import CostProjection

answers_app = typer.Typer(help="Answers from the answer log.", no_args_is_help=True)


@answers_app.command("show")
def answers_show(
    answer_id: Annotated[str, typer.Argument(help="The answer's id (answer_id of the reply).")],
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """One logged answer, with its feedback, its escalation and the credential that asked."""
    from freshkb.serving.answer_log import AnswerLog, answer_detail
    from freshkb.serving.audit import AnswerAudit
    from freshkb.serving.escalations import EscalationStore
    from freshkb.store.ledger import display_url

    settings = settings_for(config)
    url = settings.ledger_database_url
    log, escalations, audit = AnswerLog(url), EscalationStore(url), AnswerAudit(url)
    try:
        found = answer_detail(answer_id, log, escalations, audit)
    finally:
        for store in (log, escalations, audit):
            store.close()
    if found is None:
        raise fail(
            ConfigError(
                f"no answer {answer_id!r} in the answer log at {display_url(url)} (never "
                f"given, or pruned after {settings.answer_log_retention_days} days); check the id"
            )
        )
    if json_out:
        print_json(found.to_dict())
    else:
        show_detail(found)


def show_detail(found: AnswerDetail) -> None:
    """A logged answer as a table, then its feedback and escalation."""
    entry = found.answer
    table = Table(title=f"answer {entry.answer_id}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("answered", entry.answered_at.isoformat(timespec="seconds")),
        ("question", entry.question or f"(hash {entry.question_hash[:16]}...)"),
        ("mode", entry.mode),
        ("model / prompt", f"{entry.model} / {entry.prompt_version}"),
        ("embedding model", entry.embedding_model),
        ("latency", f"{entry.latency_ms:.0f} ms"),
        ("tokens", f"{entry.prompt_tokens} prompt, {entry.completion_tokens} completion"),
        ("cost", f"${entry.cost_usd:.6f}"),
        ("signals", ", ".join(entry.signals) or "-"),
    ]
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    for citation in entry.citations:
        where = f"{citation['source']} / {citation['document']}"
        table.add_row("cites", escape(f"{where} (flow run {citation['flow_run_id']})"))
    for reason in entry.reasons:
        table.add_row("why", escape(reason))
    out.print(table)
    for item in found.feedback:
        verdict = "helpful" if item.helpful else "not helpful"
        out.print(f"  feedback {item.id}: {verdict} {escape(item.comment or '')}", highlight=False)
    if found.escalation is not None:
        escalation = found.escalation
        out.print(f"  escalation {escalation.id}: {escalation.status}", highlight=False)


def cost(
    queries_per_day: Annotated[
        float | None,
        typer.Option(
            "--queries-per-day", min=0, help="Daily volume to project (default: slo.yaml's)."
        ),
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="Answers logged in this past period: 7d, 24h, 2w.")
    ] = "7d",
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Project the monthly LLM cost from the answer log's measured tokens and LLM time per
    answer at the configured prices, and check it against slo.yaml (exit 1 over a target)."""
    from freshkb.core.durations import parse_duration
    from freshkb.evaluation.slo import load_slo
    from freshkb.serving.answer_log import AnswerLog
    from freshkb.serving.costs import project_cost
    from freshkb.store.ledger import display_url

    settings = settings_for(config)
    try:
        window = timedelta(seconds=parse_duration(since))
    except ValueError as exc:
        raise fail(ConfigError(f"--since: {exc}")) from exc
    try:
        slo = load_slo(settings.slo_path)
    except FreshkbError as exc:
        raise fail(exc) from exc
    log = AnswerLog(settings.ledger_database_url, settings.answer_log_retention_days)
    try:
        entries = list(log.between(datetime.now(UTC) - window))
    finally:
        log.close()
    if not entries:
        raise fail(
            ConfigError(
                f"no answers logged in the last {since} at "
                f"{display_url(settings.ledger_database_url)}; "
                "serve some answers first, or widen --since"
            )
        )
    volume = slo.queries_per_day if queries_per_day is None else queries_per_day
    projection = project_cost(entries, volume, settings)
    checks = cost_checks(replace(slo, queries_per_day=volume), projection.cost_per_query_usd)
    if json_out:
        print_json(
            {
                **asdict(projection),
                "since": since,
                "slo_file": str(slo.path),
                "targets": [{**asdict(check), "status": check.status} for check in checks],
            }
        )
    else:
        show_cost(projection, since, checks)
    if any(check.passed is False for check in checks):
        raise typer.Exit(1)


def cost_checks(slo: SloTargets, cost_per_query: float) -> list[SloCheck]:
    """The cost targets of the SLO file (per query, monthly budget) against the projection."""
    from freshkb.evaluation.slo import COST_PER_QUERY, MONTHLY_BUDGET

    return [
        check
        for check in slo.check({COST_PER_QUERY: cost_per_query})
        if check.name in (COST_PER_QUERY, MONTHLY_BUDGET)
    ]


def show_cost(projection: CostProjection, since: str, checks: list[SloCheck]) -> None:
    """The projection, then each cost target: PASS or FAIL."""
    out.print(
        f"{projection.answers} answers in the last {since}: "
        f"{projection.prompt_tokens_per_answer:g} prompt + "
        f"{projection.completion_tokens_per_answer:g} completion tokens, "
        f"{projection.llm_seconds_per_answer:g} s of LLM per answer",
        highlight=False,
    )
    out.print(
        f"cost per query ${projection.cost_per_query_usd:.6f}; at "
        f"{projection.queries_per_day:g} queries a day, "
        f"${projection.monthly_cost_usd:,.2f} a month",
        highlight=False,
    )
    if not checks:
        err.print("slo.yaml sets no cost target (cost_per_query_usd, monthly_budget_usd)")
    for check in checks:
        colour = "green" if check.passed else "red"
        measured = "-" if check.measured is None else f"{check.measured:g}"
        out.print(
            f"  [{colour}]{check.status}[/] {check.name}: {measured} "
            f"({check.bound} {check.target:g})",
            highlight=False,
        )
