"""`freshkb eval`: run every case through the real answer path and hold the figures to slo.yaml.

The answer path is the one `freshkb serve` runs (serving/runtime.py): the injection guard,
freshness, hybrid retrieval, the LLM, the grounding checks and the output screen. With the LLM
`off` its endpoint is unreachable and its circuit open, so answers quote the documentation;
with a URL, an OpenAI-compatible server answers. The index is a throw-away one built from the
corpus the cases need (evaluation/throwaway.py), or the configured one with `live`.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from freshkb.core.config import Settings
from freshkb.evaluation.answer_pages import PageText, PdfPageTexts, judge_answer_pages
from freshkb.evaluation.cases import CaseError, CaseSet, IndirectCase, QaCase, half_of, load_cases
from freshkb.evaluation.metrics import (
    DECLINED,
    INJECTION_BLOCKED,
    Outcome,
    Retrieved,
    carried_instruction,
    cosine,
    first_rank,
    has_right_citation,
    summarise,
    summarise_halves,
    token_f1,
    ungrounded,
)
from freshkb.evaluation.slo import SloCheck, SloTargets, load_slo
from freshkb.evaluation.throwaway import (
    Progress,
    answer_path,
    default_corpus,
    evaluation_index,
    index_dir,
    plan_index,
    planted_state,
)
from freshkb.serving.costs import answer_cost
from freshkb.serving.runtime import Runtime
from freshkb.serving.service import EXTRACTIVE_LEAD, QUOTED_LEAD

LLM_OFF = "off"
UNREACHABLE_LLM = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
DEFAULT_PORTS = (28180, 25151)
MAX_FAILURES = 50
# Worst first: what reaches a customer wrongly before what only misses.
FAILURE_ORDER = ("indirect", "injection", "staleness", "out_of_scope", "qa")
LEADS = re.compile(f"^(?:{re.escape(EXTRACTIVE_LEAD)}|{re.escape(QUOTED_LEAD)})")


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how; `None` fields take the settings' value."""

    cases_dir: Path
    corpus: Path | None = None  # None: ../shared/corpus beside the repo
    llm: str = LLM_OFF  # "off" or an OpenAI-compatible base URL
    llm_model: str | None = None
    prompt_version: str | None = None
    embedding_model: str | None = None
    k: int = 5
    live: bool = False
    limit: int | None = None
    slo: Path | None = None  # None: settings.slo_path
    index_dir: Path | None = None  # keep the throw-away index here (reused); None: a temp dir
    weaviate_ports: tuple[int, int] = DEFAULT_PORTS  # HTTP, gRPC of the throw-away Weaviate
    split: str = "all"  # A or B: only that half of the cases (evaluation/cases.py half_of)
    also_index: tuple[Path, ...] = ()  # document folders indexed besides those QA cases cite


@dataclass(frozen=True)
class EvalResult:
    """The figures of a run, each SLO target against them, and the worst failures."""

    metrics: dict[str, float]
    checks: list[SloCheck]
    failures: list[Outcome]
    outcomes: list[Outcome]
    counts: dict[str, int]
    files: list[str]
    ignored: list[dict[str, str]]
    setup: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    halves: dict[str, dict[str, float]] = field(default_factory=dict)  # the figures per half

    @property
    def passed(self) -> bool:
        """True when no measured target failed (unmeasured ones are listed, not failed)."""
        return all(check.passed is not False for check in self.checks)

    @property
    def complete(self) -> bool:
        """True when every target was measured."""
        return all(check.passed is not None for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """The whole result, JSON-serialisable (passage texts clipped)."""
        return {
            "passed": self.passed,
            "complete": self.complete,
            "setup": self.setup,
            "counts": self.counts,
            "files": self.files,
            "ignored": self.ignored,
            "notes": self.notes,
            "metrics": self.metrics,
            "halves": self.halves,
            "slo": [asdict(check) | {"status": check.status} for check in self.checks],
            "failures": [o.to_dict() for o in self.failures],
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


def run_evaluation(
    options: EvalOptions, settings: Settings, progress: Progress | None = None
) -> EvalResult:
    """Every case through the answer path, the figures, and the SLO checks."""
    report = progress or (lambda stage, done, total: None)
    cases = load_cases(options.cases_dir).half(options.split).limited(options.limit)
    if cases.total == 0:
        raise CaseError(
            f"{options.cases_dir}: no cases in it (files: {', '.join(cases.files) or 'none'}); "
            "point --cases at a folder of eval files such as ../shared/eval/dev"
        )
    slo = load_slo(options.slo or settings.slo_path)
    ours = answer_settings(options, settings)
    started = time.monotonic()
    notes: list[str] = []
    if options.live:
        outcomes = _run_live(options, ours, cases, notes, report)
    else:
        outcomes = _run_throwaway(options, ours, cases, notes, report)
    return _result(options, ours, cases, slo, outcomes, notes, time.monotonic() - started)


def answer_settings(options: EvalOptions, settings: Settings) -> Settings:
    """The settings the answer path runs with: the options' LLM, model, prompt, embedder."""
    update: dict[str, Any] = {
        "llm_model": options.llm_model or settings.llm_model,
        "prompt_version": options.prompt_version or settings.prompt_version,
        "embedding_model": options.embedding_model or settings.embedding_model,
    }
    if options.llm == LLM_OFF:
        update |= {"llm_base_url": UNREACHABLE_LLM, "llm_breaker_cooldown": 1e9}
    else:
        update["llm_base_url"] = options.llm
    return settings.model_copy(update=update)


def _run_live(
    options: EvalOptions, settings: Settings, cases: CaseSet, notes: list[str], report: Progress
) -> list[Outcome]:
    """The cases against the configured index; staleness and indirect cases are skipped, as
    they would change the live ledger and index."""
    from freshkb.store import server

    skipped = {"staleness": len(cases.staleness), "indirect": len(cases.indirect)}
    for kind, count in skipped.items():
        if count:
            notes.append(f"{count} {kind} case(s) not run with --live: they change the index")
    cases = replace(cases, staleness=(), indirect=())
    if options.also_index:
        notes.append("--also-index not used with --live: the configured index is what answers")
    server.ensure_running(settings)
    llm_off = options.llm == LLM_OFF
    with (
        tempfile.TemporaryDirectory(prefix="freshkb-eval-") as work,
        answer_path(settings, llm_off, Path(work)) as runtime,
    ):
        pages = PdfPageTexts(options.corpus) if options.corpus else None
        return _run_cases(runtime, cases, options.k, {}, report, pages)


def _run_throwaway(
    options: EvalOptions, settings: Settings, cases: CaseSet, notes: list[str], report: Progress
) -> list[Outcome]:
    """The cases against an index built for them."""
    corpus = options.corpus or default_corpus()
    with index_dir(options.index_dir) as data_dir:
        plan = plan_index(cases, corpus, data_dir, options.weaviate_ports, options.also_index)
        with evaluation_index(plan, cases, settings, report) as built:
            emails = built.report("eval-emails")
            if emails is not None and emails.chunks_embedded:
                notes.append(
                    f"ingest screen flagged {emails.chunks_flagged} of "
                    f"{emails.chunks_embedded} e-mail chunks embedded in this run"
                )
            sources = {s["name"]: s for s in plan.sources}
            with answer_path(built.settings, options.llm == LLM_OFF, None) as runtime:
                pages = PdfPageTexts(corpus)
                return _run_cases(runtime, cases, options.k, sources, report, pages)


def _run_cases(
    runtime: Runtime,
    cases: CaseSet,
    k: int,
    sources: dict[str, dict[str, Any]],
    report: Progress,
    pages: PageText | None = None,
) -> list[Outcome]:
    """Every case, staleness last (it changes the ledger for one question at a time)."""
    total, outcomes = cases.total, []
    asked = [(kind, case) for kind, group in cases.groups().items() for case in group]
    for done, (kind, case) in enumerate(asked):
        report(f"answering {kind}", done, total)
        if kind == "staleness":
            with planted_state(runtime.service.settings, sources[case.source], case.state):
                outcomes.append(_judge(runtime, kind, case, k, pages))
        else:
            outcomes.append(_judge(runtime, kind, case, k, pages))
    report("answered", total, total)
    return outcomes


def _judge(runtime: Runtime, kind: str, case: Any, k: int, pages: PageText | None) -> Outcome:
    """Ask one case's question and judge what came back."""
    question = case.text if kind == "injection" else case.question
    outcome = replace(_ask(runtime, kind, case.id, question, k), half=half_of(case))
    if outcome.mode is None:
        return replace(outcome, problem=f"error: {outcome.error}")
    problems: list[str] = []
    if outcome.ungrounded:
        problems.append(f"served ungrounded: {outcome.ungrounded}")
    if kind == "qa":
        outcome = _judge_qa(runtime, outcome, case, k, problems)
        outcome = judge_answer_pages(outcome, case, pages)
    elif kind == "out_of_scope" and outcome.mode not in DECLINED:
        problems.append(f"answered ({outcome.mode}) a question the corpus does not answer")
    elif kind == "injection":
        outcome = replace(outcome, label=case.label)
        if case.label == "injection" and not outcome.blocked:
            problems.append(f"injection not blocked (answered {outcome.mode})")
        if case.label == "benign" and outcome.blocked:
            problems.append("benign question blocked as injection")
    elif kind == "indirect":
        outcome = _judge_indirect(runtime, outcome, case, problems)
    elif kind == "staleness":
        if outcome.mode != case.expected_mode:
            problems.append(f"mode {outcome.mode}, expected {case.expected_mode}")
        if case.disclaimer.lower() not in outcome.answer.lower():
            problems.append(f"answer lacks the disclaimer {case.disclaimer!r}")
    return replace(outcome, problem="; ".join(problems))


def _judge_qa(
    runtime: Runtime, outcome: Outcome, case: QaCase, k: int, problems: list[str]
) -> Outcome:
    """Rank of the right page, whether the answer cites it, closeness to the truth."""
    rank = first_rank([(r.file, r.page) for r in outcome.retrieved], case.pages)
    plain = LEADS.sub("", re.sub(r"\[S\d+\]", "", outcome.answer)).strip()
    truth = re.sub(r"\[[^\]]+\]", "", case.truth)
    vectors = runtime.service.embedder.embed([plain or "-", truth])
    if rank is None:
        problems.append(f"missed retrieval: no page of {_pages(case)} in the top {k}")
    if outcome.mode in DECLINED:
        problems.append(f"answerable question {outcome.mode}")
    return replace(
        outcome,
        rank=rank,
        cited_right_page=has_right_citation(outcome.cited, case.pages),
        f1=token_f1(plain, truth),
        cosine=cosine(vectors[0], vectors[1]),
    )


def _judge_indirect(
    runtime: Runtime, outcome: Outcome, case: IndirectCase, problems: list[str]
) -> Outcome:
    """Whether the answer carried the hidden instruction, and whether the screen saw it (the
    guard the ingest screen runs, on the e-mail as ingested)."""
    carried = carried_instruction(outcome.answer, case.attack, case.context)
    flagged = runtime.service.guard.inspect_document(case.tainted_text()).flagged
    if carried:
        problems.append(f"hidden instruction {carried} ({case.category})")
    return replace(outcome, carried=carried, flagged=flagged)


def _ask(runtime: Runtime, kind: str, case_id: str, question: str, k: int) -> Outcome:
    """One question through retrieval and the answer path; an exception is an outcome too."""
    service = runtime.service
    started = time.perf_counter()
    try:
        hits, _ = service.retrieve(question, None, k)
        started = time.perf_counter()
        result = service.answer(question, k=k)
    except Exception as exc:  # availability counts these; the run goes on
        return Outcome(case_id, kind, question, None, error=f"{type(exc).__name__}: {exc}")
    latency = (time.perf_counter() - started) * 1000
    retrieved = tuple(_retrieved(hit) for hit in hits)
    outcome = Outcome(
        case_id=case_id,
        kind=kind,
        question=question,
        mode=result.mode,
        answer=result.answer,
        reasons=tuple(result.reasons),
        retrieved=retrieved,
        latency_ms=round(latency, 1),
        timings_ms=dict(result.timings_ms),
        prompt_tokens=result.tokens.get("prompt", 0),
        completion_tokens=result.tokens.get("completion", 0),
        cost_usd=answer_cost(
            result.tokens.get("prompt", 0),
            result.tokens.get("completion", 0),
            result.timings_ms.get("llm", 0.0) / 1000,
            service.settings,
        ),
        blocked=result.mode == "refused"
        and any(r.startswith(INJECTION_BLOCKED) for r in result.reasons),
    )
    judged = result.trace.answerability
    if judged is not None:
        evidence = asdict(judged.evidence) | {"probability": round(judged.probability, 4)}
        outcome = replace(outcome, answerability=evidence)
    by_chunk = {r.chunk_id: r for r in retrieved}
    cited = {c.label: by_chunk[c.chunk_id].text for c in result.citations if c.chunk_id in by_chunk}
    cited |= {c.label: "" for c in result.citations if c.chunk_id not in by_chunk}
    problem = ungrounded(result.answer, cited) if result.mode == "normal" else None
    return replace(outcome, ungrounded=problem, cited=_citations(by_chunk, result))


def _retrieved(hit: Any) -> Retrieved:
    return Retrieved(
        chunk_id=hit.uuid,
        source=hit.source,
        file=Path(hit.document_key).name,
        page=hit.page,
        title=hit.title,
        text=hit.text,
        relevance=hit.relevance,
    )


def _citations(by_chunk: dict[str, Retrieved], result: Any) -> tuple[Retrieved, ...]:
    """The passages an answer cites, with their text when the evaluation's search saw them."""
    return tuple(
        by_chunk.get(c.chunk_id)
        or Retrieved(c.chunk_id, c.source, Path(c.document).name, c.page, c.title, "")
        for c in result.citations
    )


def _pages(case: QaCase) -> str:
    return ", ".join(f"{p.file}#page={p.page}" if p.page else p.file for p in case.pages)


def _result(
    options: EvalOptions,
    settings: Settings,
    cases: CaseSet,
    slo: SloTargets,
    outcomes: list[Outcome],
    notes: list[str],
    seconds: float,
) -> EvalResult:
    metrics = slo.derived(summarise(outcomes, options.k))
    failed = [o for o in outcomes if o.problem]
    failed.sort(key=lambda o: FAILURE_ORDER.index(o.kind))
    return EvalResult(
        metrics=metrics,
        checks=slo.check(metrics),
        failures=failed[:MAX_FAILURES],
        outcomes=outcomes,
        counts={kind: sum(o.kind == kind for o in outcomes) for kind in cases.groups()},
        files=list(cases.files),
        ignored=[asdict(item) for item in cases.ignored],
        setup={
            "llm": options.llm,
            "llm_model": settings.llm_model if options.llm != LLM_OFF else None,
            "prompt_version": settings.prompt_version,
            "embedding_model": settings.embedding_model,
            "k": options.k,
            "split": options.split,
            "index": "live" if options.live else "throw-away",
            "also_indexed": [] if options.live else [str(p) for p in options.also_index],
            "slo_file": str(slo.path),
            "queries_per_day": slo.queries_per_day,
            "seconds": round(seconds, 1),
        },
        notes=notes,
        halves=summarise_halves(outcomes, options.k),
    )
