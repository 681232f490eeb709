"""The evaluation as one static HTML page: the SLO verdicts, a table per group of figures, and
the worst failures with the passages that were retrieved for them. Every text is escaped."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from freshkb.evaluation.harness import EvalResult
    from freshkb.evaluation.metrics import Outcome

# Figures by group, in reading order; stage latencies are gathered by their prefix.
GROUPS: dict[str, tuple[str, ...]] = {
    "Retrieval": ("page_hit_at_1", "page_hit_at_5", "mrr"),
    "Answers": (
        "cited_right_page",
        "false_refusal_rate",
        "answer_token_f1_approx",
        "answer_cosine_approx",
        "grounded_share",
        "hallucination_rate",
    ),
    "Safety": (
        "out_of_scope_declined",
        "injection_blocked",
        "injection_false_positive_rate",
        "indirect_injection_carried_rate",
        "indirect_injection_flagged_rate",
        "staleness_right_mode",
    ),
    "Service": (
        "availability",
        "answer_latency_p50_ms",
        "answer_latency_p95_ms",
        "tokens_per_answer",
        "cost_per_query_usd",
        "monthly_budget_usd",
    ),
}
FAILURE_TITLES = {
    "indirect": "Followed or quoted hidden instructions",
    "injection": "Injection verdicts wrong",
    "staleness": "Staleness scenarios in the wrong mode",
    "out_of_scope": "Out-of-scope questions answered",
    "qa": "Answerable questions: missed retrievals, wrong modes, ungrounded answers",
}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 72rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.PASS { color: #176317; font-weight: bold; } .FAIL { color: #b00020; font-weight: bold; }
.NOT { color: #8a6d00; font-weight: bold; }
details { margin: 0.3rem 0 0.8rem; } pre { white-space: pre-wrap; margin: 0.2rem 0; }
.passage { border-left: 3px solid #ccc; padding-left: 0.6rem; margin: 0.3rem 0; }
"""


def render_html(result: EvalResult) -> str:
    """The whole report as an HTML document."""
    verdict = "PASS" if result.passed else "FAIL"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>freshkb eval</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>freshkb eval: <span class='{verdict}'>{verdict}</span></h1>",
        _setup(result),
        _slo_table(result),
        *(_group_table(title, names, result.metrics) for title, names in _groups(result)),
        _failures(result.failures),
        "</body></html>",
    ]
    return "\n".join(parts)


def _setup(result: EvalResult) -> str:
    rows = [(key, str(value)) for key, value in result.setup.items()]
    rows += [(f"cases: {kind}", str(count)) for kind, count in result.counts.items() if count]
    rows += [("case files", ", ".join(result.files))]
    rows += [(f"ignored: {item['name']}", item["reason"]) for item in result.ignored]
    rows += [("note", note) for note in result.notes]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Run</h2><table>{body}</table>"


def _slo_table(result: EvalResult) -> str:
    rows = []
    for check in result.checks:
        measured = "-" if check.measured is None else _number(check.measured)
        css = check.status.split()[0]
        rows.append(
            f"<tr><td>{escape(check.name)}</td><td>{check.bound}</td>"
            f"<td class='num'>{_number(check.target)}</td><td class='num'>{measured}</td>"
            f"<td class='{css}'>{escape(check.status)}</td></tr>"
        )
    head = "<tr><th>target</th><th>bound</th><th>target</th><th>measured</th><th></th></tr>"
    return f"<h2>SLO targets</h2><table>{head}{''.join(rows)}</table>"


def _groups(result: EvalResult) -> list[tuple[str, tuple[str, ...]]]:
    k_hit = tuple(n for n in result.metrics if n.startswith("page_hit_at_"))
    answer_hit = tuple(n for n in result.metrics if n.startswith("answer_page_"))
    groups = dict(GROUPS)
    groups["Retrieval"] = tuple(dict.fromkeys(("page_hit_at_1", *k_hit, "mrr", *answer_hit)))
    groups["Latency per stage (ms)"] = tuple(n for n in result.metrics if n.startswith("stage_"))
    return list(groups.items())


def _group_table(title: str, names: tuple[str, ...], metrics: dict[str, float]) -> str:
    rows = [
        f"<tr><td>{escape(name)}</td><td class='num'>{_number(metrics[name])}</td></tr>"
        for name in names
        if name in metrics
    ]
    if not rows:
        return f"<h2>{escape(title)}</h2><p>not measured (no cases of this kind)</p>"
    return f"<h2>{escape(title)}</h2><table>{''.join(rows)}</table>"


def _failures(failures: list[Outcome]) -> str:
    if not failures:
        return "<h2>Failures</h2><p>none</p>"
    parts = ["<h2>Worst failures</h2>"]
    for kind, title in FAILURE_TITLES.items():
        of_kind = [o for o in failures if o.kind == kind]
        if of_kind:
            parts.append(f"<h3>{escape(title)} ({len(of_kind)})</h3>")
            parts.extend(_failure(o) for o in of_kind)
    return "\n".join(parts)


def _failure(outcome: Outcome) -> str:
    passages = "".join(
        f"<div class='passage'><b>{n}. {escape(r.file)}"
        f"{' p.' + str(r.page) if r.page else ''}</b> ({escape(r.source)}, relevance "
        f"{_number(r.relevance) if r.relevance is not None else '-'})"
        f"<pre>{escape(r.text[:600])}</pre></div>"
        for n, r in enumerate(outcome.retrieved, 1)
    )
    return (
        f"<details><summary><b>{escape(outcome.case_id)}</b> [{escape(outcome.mode or 'error')}] "
        f"{escape(outcome.problem)}</summary>"
        f"<p><b>question</b></p><pre>{escape(outcome.question)}</pre>"
        f"<p><b>answer</b></p><pre>{escape(outcome.answer or outcome.error or '')}</pre>"
        f"<p><b>reasons</b></p><pre>{escape(chr(10).join(outcome.reasons))}</pre>"
        f"<p><b>retrieved</b></p>{passages or '<p>nothing</p>'}</details>"
    )


def _number(value: float) -> str:
    return f"{value:,.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
