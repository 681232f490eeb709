"""`freshkb eval`: judge the answer path on a directory of cases and gate on slo.yaml.

Exit 0 when every measured SLO target passes, 1 when one fails, 2 on bad input (a cases
directory, corpus or slo.yaml that cannot be used).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from freshkb.cli.options import ConfigOption, JsonFlag, settings_for
from freshkb.cli.output import err, fail, print_json, wide_console
from freshkb.cli.prefect_runs import explained_prefect_failures
from freshkb.cli.temporary_prefect import start_temporary_server
from freshkb.core.errors import FreshkbError

if TYPE_CHECKING:
    from freshkb.evaluation.harness import EvalResult

STATUS_STYLE = {"PASS": "green", "FAIL": "bold red", "NOT MEASURED": "yellow"}
# The figures printed under the SLO table, beside the targets.
ALSO_SHOWN = (
    "page_hit_at_1",
    "mrr",
    "cited_right_page",
    "answer_token_f1_approx",
    "answer_cosine_approx",
    "grounded_share",
    "indirect_injection_carried_rate",
    "indirect_injection_flagged_rate",
    "staleness_right_mode",
    "tokens_per_answer",
)


CasesOption = Annotated[
    Path, typer.Option("--cases", help="Folder of eval case files, e.g. ../shared/eval/dev.")
]
CorpusOption = Annotated[
    Path | None,
    typer.Option("--corpus", help="Folder with the files the cases cite (../shared/corpus)."),
]
LlmOption = Annotated[
    str, typer.Option("--llm", help="'off' (quoted answers) or an OpenAI-compatible /v1 URL.")
]
ModelOption = Annotated[str | None, typer.Option("--llm-model", help="Default: settings.")]
PromptOption = Annotated[str | None, typer.Option("--prompt-version", help="Default: settings.")]
KOption = Annotated[int, typer.Option("--k", min=1, max=20, help="Passages retrieved.")]
SloOption = Annotated[
    Path | None, typer.Option("--slo", help="SLO file (default: slo.yaml beside the config).")
]
LimitOption = Annotated[
    int | None, typer.Option("--limit", min=1, help="At most N cases of each kind.")
]
LiveFlag = Annotated[
    bool, typer.Option("--live", help="Use the configured index instead of a throw-away one.")
]
ReportOption = Annotated[Path | None, typer.Option("--report", help="Also write an HTML report.")]
IndexDirOption = Annotated[
    Path | None,
    typer.Option("--index-dir", help="Keep the throw-away index here, reused next time."),
]
SplitOption = Annotated[
    str,
    typer.Option(
        "--split", help="Only half A or B of the cases (by the hash of each case's text), or all."
    ),
]
# Figures shown per half of the cases (tune on one half, check on the other)
HALF_FIGURES = (
    "page_hit_at_1",
    "page_hit_at_5",
    "mrr",
    "out_of_scope_declined",
    "false_refusal_rate",
)
AlsoIndexOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--also-index",
        help="A folder of documents to index too (repeatable): a fuller knowledge base for the "
        "out-of-scope and injection cases.",
    ),
]
HttpPortOption = Annotated[
    int, typer.Option("--weaviate-http-port", help="The throw-away Weaviate's HTTP port.")
]
GrpcPortOption = Annotated[
    int, typer.Option("--weaviate-grpc-port", help="The throw-away Weaviate's gRPC port.")
]


# A Typer command takes one parameter per command-line option.
def evaluate(  # noqa: PLR0913
    cases: CasesOption,
    corpus: CorpusOption = None,
    llm: LlmOption = "off",
    llm_model: ModelOption = None,
    prompt_version: PromptOption = None,
    k: KOption = 5,
    slo: SloOption = None,
    limit: LimitOption = None,
    live: LiveFlag = False,
    report: ReportOption = None,
    index_dir: IndexDirOption = None,
    split: SplitOption = "all",
    also_index: AlsoIndexOption = None,
    weaviate_http_port: HttpPortOption = 28180,
    weaviate_grpc_port: GrpcPortOption = 25151,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Run the eval cases through the answer path; print each SLO target, measured, PASS/FAIL."""
    from freshkb.evaluation.harness import EvalOptions, run_evaluation
    from freshkb.evaluation.report import render_html
    from freshkb.evaluation.slo import load_slo

    options = EvalOptions(
        cases_dir=cases,
        corpus=corpus,
        llm=llm,
        llm_model=llm_model,
        prompt_version=prompt_version,
        k=k,
        live=live,
        limit=limit,
        slo=slo,
        index_dir=index_dir,
        weaviate_ports=(weaviate_http_port, weaviate_grpc_port),
        split=split,
        also_index=tuple(also_index or ()),
    )
    try:
        settings = settings_for(config)
        load_slo(options.slo or settings.slo_path)  # a bad SLO file fails before any server starts
        if not live:  # the throw-away index is (re)built by ingest flows
            start_temporary_server()
        with explained_prefect_failures(), _progress_bar() as progress:
            result = run_evaluation(options, settings, progress)
    except FreshkbError as exc:
        raise fail(exc) from exc
    if report is not None:
        report.write_text(render_html(result), encoding="utf-8")
        err.print(f"report written to {escape(str(report))}", highlight=False)
    if json_out:
        print_json(result.to_dict())
    else:
        show_result(result)
    if not result.passed:
        raise typer.Exit(1)


def show_result(result: EvalResult) -> None:
    """The SLO table, the other figures, the notes and a one-line verdict."""
    console = wide_console()
    table = Table(title="SLO targets", title_justify="left")
    for column in ("target", "bound", "measured", ""):
        table.add_column(column)
    for check in result.checks:
        measured = "-" if check.measured is None else f"{check.measured:.4g}"
        style = STATUS_STYLE[check.status]
        table.add_row(
            check.name, f"{check.bound} {check.target:g}", measured, f"[{style}]{check.status}[/]"
        )
    console.print(table)
    shown = {check.name for check in result.checks}
    for name in ALSO_SHOWN:
        if name in result.metrics and name not in shown:
            console.print(f"  {name:<34}{result.metrics[name]:.4g}", highlight=False)
    for half, figures in result.halves.items():
        shown_half = ", ".join(f"{n} {figures[n]:.4g}" for n in HALF_FIGURES if n in figures)
        console.print(f"  half {half}: {shown_half}", highlight=False)
    counts = ", ".join(f"{count} {kind}" for kind, count in result.counts.items() if count)
    console.print(f"cases: {counts} ({result.setup['seconds']}s)", highlight=False)
    for item in result.ignored:
        console.print(f"  [dim]ignored {escape(item['name'])}: {escape(item['reason'])}[/]")
    for note in result.notes:
        console.print(f"  [dim]{escape(note)}[/]")
    failed = sum(check.passed is False for check in result.checks)
    unmeasured = sum(check.passed is None for check in result.checks)
    verdict = "[bold red]FAIL[/]" if failed else "[green]PASS[/]"
    console.print(
        f"{verdict}: {failed} target(s) failed, {unmeasured} not measured, "
        f"{len(result.failures)} case failure(s) listed in --json / --report"
    )


@contextmanager
def _progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A bar on stderr following the harness's stages (none when progress is off)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from freshkb.core.progress import progress_enabled

    if not progress_enabled():
        yield lambda stage, done, total: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=err
    ) as bar:
        task = bar.add_task("eval", total=None)

        def advance(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        yield advance
