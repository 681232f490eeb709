"""Commands for watching answers in production: the human review loop (sample, list, mark,
export as evaluation cases, the measured hallucination rate) and the drift report."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.markup import escape
from rich.table import Table

from freshkb.cli.options import ConfigOption, JsonFlag, settings_for
from freshkb.cli.output import err, fail, out, print_json, wide_console
from freshkb.core.durations import parse_duration
from freshkb.core.errors import ConfigError, FreshkbError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from freshkb.evaluation.drift import DriftReport
    from freshkb.evaluation.review import ReviewQueue, Verdict
    from freshkb.serving.answer_log import AnswerLog

review_app = typer.Typer(help="Human review of logged answers.", no_args_is_help=True)


@contextmanager
def _stores(config: Path | None) -> Iterator[tuple[ReviewQueue, AnswerLog]]:
    """The review queue and the answer log, in the operational database."""
    from freshkb.evaluation.review import ReviewQueue
    from freshkb.serving.answer_log import AnswerLog

    settings = settings_for(config)
    queue = ReviewQueue(settings.ledger_database_url)
    log = AnswerLog(settings.ledger_database_url, settings.answer_log_retention_days)
    try:
        yield queue, log
    finally:
        queue.close()
        log.close()


def _period(value: str, option: str) -> timedelta:
    """A duration option (7d, 24h, ...) as a timedelta; a clear error naming the option."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise fail(ConfigError(f"{option} {exc}")) from exc
    if seconds <= 0:
        raise fail(ConfigError(f"{option} must be longer than 0, e.g. 7d"))
    return timedelta(seconds=seconds)


@review_app.command("sample")
def sample(
    n: Annotated[int, typer.Option("--n", min=0, help="Answers drawn at random.")] = 50,
    since: Annotated[str, typer.Option("--since", help="The period: 7d, 24h, ...")] = "7d",
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the random draw.")] = None,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Queue n random answers of the period plus every high-risk one (low retrieval confidence,
    escalated, unhelpful feedback, a hallucination signal); none is queued twice."""
    end = datetime.now(UTC)
    start = end - _period(since, "--since")
    with _stores(config) as (queue, log):
        drawn = queue.draw(log, start, end, n, seed)
    if json_out:
        print_json(drawn.to_dict())
        return
    out.print(
        f"{drawn.answers} answers since {start:%Y-%m-%d %H:%M} UTC: queued "
        f"{len(drawn.sampled)} drawn at random (seed {drawn.seed}) and "
        f"{len(drawn.high_risk)} more for their risks"
    )


@review_app.command("list")
def review_list(
    pending: Annotated[bool, typer.Option("--pending", help="Only answers not reviewed.")] = False,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """List the review queue, oldest first."""
    from freshkb.evaluation.review import review_record

    with _stores(config) as (queue, log):
        records = [review_record(item, log.find(item.answer_id)) for item in queue.items(pending)]
    if json_out:
        print_json(records)
        return
    table = Table("answer id", "queued", "why", "mode", "verdict", "question")
    for record in records:
        table.add_row(
            record["answer_id"],
            record["queued_at"][:16],
            ", ".join([record["reason"], *record["risks"]][:3]),
            record["mode"],
            record["verdict"] or "-",
            escape(record["question"] or "(not logged)"),
        )
    wide_console().print(table)


@review_app.command("mark")
def mark(
    answer_id: Annotated[str, typer.Argument(help="The queued answer's id.")],
    verdict: Annotated[str, typer.Argument(help="correct, incorrect or should_decline.")],
    correction: Annotated[
        str | None,
        typer.Option("--correction", help="The right answer, ending with [DOC#page=N] if known."),
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="Why.")] = None,
    reviewer: Annotated[str, typer.Option("--reviewer", help="Who reviewed.")] = "reviewer",
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Record a reviewer's verdict on a queued answer."""
    from freshkb.evaluation.review import VERDICTS

    if verdict not in VERDICTS:
        raise fail(ConfigError(f"verdict {verdict!r}: write one of {', '.join(VERDICTS)}"))
    with _stores(config) as (queue, log):
        try:
            checked = cast("Verdict", verdict)
            item = queue.mark(log, answer_id, checked, reviewer, correction, note)
        except FreshkbError as exc:
            raise fail(exc) from exc
    if json_out:
        print_json(item.to_dict())
    else:
        out.print(f"marked {item.answer_id} {item.verdict}")


@review_app.command("export")
def export(
    folder: Annotated[Path, typer.Argument(help="Folder for the case files.")],
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Write the marks as evaluation cases (reviewed_qa.jsonl, reviewed_out_of_scope.jsonl)
    that `freshkb eval --cases FOLDER` reads."""
    from freshkb.evaluation.review_results import export_cases

    with _stores(config) as (queue, log):
        written = export_cases(queue, log, folder)
    if json_out:
        print_json(written.to_dict())
        return
    err.print(
        f"wrote {written.qa} answerable and {written.out_of_scope} out-of-scope cases to "
        f"{escape(str(folder))}"
    )
    for count, why in (
        (written.skipped_question_not_logged, "the log kept only the question's hash"),
        (written.skipped_no_truth, "no truth: incorrect without --correction, or no answer text"),
        (written.skipped_pruned, "gone from the answer log (retention)"),
    ):
        if count:
            err.print(f"skipped {count} reviewed answers: {why}")


@review_app.command("rate")
def rate(config: ConfigOption = None, json_out: JsonFlag = False) -> None:
    """The measured hallucination rate: incorrect among reviewed normal-mode answers of the
    random sample, with its 95% Wilson interval; high-risk answers apart."""
    from freshkb.evaluation.review_results import hallucination_rate

    with _stores(config) as (queue, _):
        measured = hallucination_rate(queue.items())
    if json_out:
        print_json(measured.to_dict())
        return
    sample = measured.sample
    if measured.rate is None:
        out.print("no reviewed normal-mode answer from a random sample yet: `review sample`")
    else:
        out.print(
            f"hallucination rate {measured.rate:.1%} (95% CI {measured.low:.1%} to "
            f"{measured.high:.1%}): {sample.incorrect} incorrect of {sample.reviewed} reviewed "
            f"normal-mode answers drawn at random; {sample.should_decline} should have declined"
        )
    table = Table("high risk (picked on purpose)", "reviewed", "incorrect", "should decline")
    for risk, tally in measured.high_risk.items():
        table.add_row(risk, str(tally.reviewed), str(tally.incorrect), str(tally.should_decline))
    out.print(table)
    out.print(f"{measured.pending} answers wait for review")


def drift(
    baseline: Annotated[str, typer.Option("--baseline", help="Baseline window: 7d, ...")] = "7d",
    recent: Annotated[str, typer.Option("--recent", help="Recent window, ending now.")] = "1d",
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the HTML report with plots here.")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", help="End of the recent window (UTC).")
    ] = None,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Compare recent questions and answers with the baseline window before them: query topics,
    new topics and their retrieval, answer length, refusal, escalation and citation rates,
    latency; flags what moved."""
    from freshkb.evaluation.drift import compare
    from freshkb.evaluation.drift_windows import read_windows

    end = until.replace(tzinfo=until.tzinfo or UTC) if until else datetime.now(UTC)
    with _stores(config) as (_, log), err.status("comparing the windows"):
        windows = read_windows(
            log, _period(baseline, "--baseline"), _period(recent, "--recent"), end
        )
        try:
            found = compare(windows)
        except FreshkbError as exc:
            raise fail(exc) from exc
        if report is not None:
            from freshkb.evaluation.drift_report import render_html

            report.write_text(render_html(found), encoding="utf-8")
    if json_out:
        print_json(found.report.to_dict())
    else:
        _show_drift(found.report)
    if report is not None:
        err.print(f"wrote the drift report to {escape(str(report))}")


def _show_drift(report: DriftReport) -> None:
    """The figures, the baseline topics and the groups of questions outside them, as a table;
    then the flags."""
    table = Table("measure", "baseline", "recent", "flag", title="drift")
    for figure in report.figures:
        cells = [
            "-"
            if value is None
            else (f"{value:.1%}" if figure.unit == "share" else f"{value:,.2f} {figure.unit}")
            for value in (figure.baseline, figure.recent)
        ]
        table.add_row(figure.name, *cells, "[red]moved[/]" if figure.flagged else "")
    for topic in report.topics:
        shares = f"{topic.baseline_share:.1%}", f"{topic.recent_share:.1%}"
        table.add_row(
            f"topic: {escape(topic.label)}", *shares, "[red]moved[/]" if topic.flagged else ""
        )
    for group in report.new_topics[:5]:
        why = ["[red]new topic[/]"] if group.flagged else []
        why += ["poor retrieval"] if group.poor_retrieval else []
        name = f"outside the topics: {escape(group.label)}"
        table.add_row(name, "-", f"{group.share:.1%}", ", ".join(why))
    wide_console().print(table)
    listed = ": " + escape("; ".join(report.flags)) if report.flags else ""
    out.print(f"{len(report.flags)} flags{listed}")
