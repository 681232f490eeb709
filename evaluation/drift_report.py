"""The drift report as one static HTML page: tables of every figure and topic, and matplotlib
plots embedded as base64 PNG images, so the file can be mailed or archived on its own.

Every text that reaches the page (topic labels come from customers' questions) is escaped.
"""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

import numpy as np

from freshkb.evaluation.drift import Drift, DriftReport
from freshkb.evaluation.drift_windows import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flag td { background: #fde8e8; }
img { max-width: 100%; margin: .5em 0; }
"""


def _png(figure: Any) -> str:
    """A matplotlib figure as an <img> with its PNG inline."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'


def _pyplot() -> Any:
    """pyplot on the Agg backend: no display needed, safe off the main thread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _topic_plot(report: DriftReport) -> str:
    plt = _pyplot()
    labels = [t.label for t in report.topics] + ["outside every topic"]
    base = [t.baseline_share for t in report.topics] + [0.0]
    outside = sum(t.share for t in report.new_topics)
    recent = [t.recent_share for t in report.topics] + [outside]
    figure, axes = plt.subplots(figsize=(9, 0.5 * len(labels) + 1.5))
    rows = np.arange(len(labels))
    axes.barh(rows - 0.2, base, height=0.4, label="baseline")
    axes.barh(rows + 0.2, recent, height=0.4, label="recent")
    axes.set_yticks(rows, labels)
    axes.invert_yaxis()
    axes.set_xlabel("share of questions")
    axes.set_title("Query topics")
    axes.legend()
    return _png(figure)


def _map_plot(drift: Drift) -> str:
    """Baseline and recent questions projected on the baseline's first two principal axes."""
    plt = _pyplot()
    windows = drift.windows
    base = [e.question_vector for e in windows.baseline if e.question_vector is not None]
    recent = [
        (e.question_vector, t)
        for e, t in zip(windows.recent, drift.recent_topics, strict=True)
        if t is not None
    ]
    base_matrix = np.stack(base)
    centre = base_matrix.mean(axis=0)
    _, _, axes_t = np.linalg.svd(base_matrix - centre, full_matrices=False)
    project = axes_t[:2].T

    def flat(rows: list[Any]) -> np.ndarray:
        return (np.stack(rows) - centre) @ project

    figure, axes = plt.subplots(figsize=(7, 5))
    points = flat(base)
    axes.scatter(points[:, 0], points[:, 1], s=12, c="#9ab", label="baseline")
    known = [v for v, t in recent if t != -1]
    new = [v for v, t in recent if t == -1]
    for rows, colour, name in (
        (known, "#2a6", "recent"),
        (new, "#d33", "recent, outside every topic"),
    ):
        if rows:
            points = flat(rows)
            axes.scatter(points[:, 0], points[:, 1], s=18, c=colour, label=name)
    axes.set_title("Questions on the baseline's two main axes (PCA)")
    axes.legend()
    return _png(figure)


def _figure_plot(figures: list[Figure], names: list[str], title: str, unit: str) -> str:
    """Baseline against recent bars of the named figures; a moved one is marked (!)."""
    plt = _pyplot()
    chosen = [f for f in figures if f.name in names]
    figure, axes = plt.subplots(figsize=(9, 0.5 * len(chosen) + 1.5))
    rows = np.arange(len(chosen))
    axes.barh(rows - 0.2, [f.baseline or 0 for f in chosen], height=0.4, label="baseline")
    axes.barh(rows + 0.2, [f.recent or 0 for f in chosen], height=0.4, label="recent")
    axes.set_yticks(rows, [f.name + (" (!)" if f.flagged else "") for f in chosen])
    axes.invert_yaxis()
    axes.set_xlabel(unit)
    axes.set_title(title)
    axes.legend()
    return _png(figure)


def _histogram(drift: Drift, field: str, title: str) -> str:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.5))
    for name, entries in (("baseline", drift.windows.baseline), ("recent", drift.windows.recent)):
        values = [float(getattr(e, field)) for e in entries]
        if values:
            axes.hist(values, bins=20, alpha=0.5, density=True, label=name)
    axes.set_title(title)
    axes.legend()
    return _png(figure)


def _number(value: float | None, unit: str = "share") -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if unit == "share" else f"{value:,.2f} {unit}"


def _figure_rows(figures: list[Figure]) -> str:
    return "".join(
        f'<tr class="{"flag" if f.flagged else ""}"><td>{escape(f.name)}</td>'
        f'<td class="num">{_number(f.baseline, f.unit)}</td>'
        f'<td class="num">{_number(f.recent, f.unit)}</td>'
        f"<td>{'moved' if f.flagged else ''}</td><td>{escape(f.rule)}</td></tr>"
        for f in figures
    )


def _topic_rows(report: DriftReport) -> str:
    return "".join(
        f'<tr class="{"flag" if t.flagged else ""}"><td>{escape(t.label)}</td>'
        f'<td class="num">{t.baseline_count}</td><td class="num">{t.baseline_share:.1%}</td>'
        f'<td class="num">{t.recent_count}</td><td class="num">{t.recent_share:.1%}</td></tr>'
        for t in report.topics
    )


def _new_rows(report: DriftReport) -> str:
    return "".join(
        f'<tr class="{"flag" if t.flagged else ""}"><td>{escape(t.label)}</td>'
        f'<td class="num">{t.count}</td><td class="num">{t.share:.1%}</td>'
        f'<td class="num">{_number(t.mean_relevance, "score")}</td>'
        f"<td>{'poor' if t.poor_retrieval else ''}</td>"
        f"<td>{'<br>'.join(escape(q) for q in t.examples)}</td></tr>"
        for t in report.new_topics
    )


RATES = ["refusal rate", "escalation rate", "degraded rate", "citation rate"]
RATES += ["hallucination signal rate", "questions outside the baseline topics"]


def render_html(drift: Drift) -> str:
    """The whole report page."""
    report = drift.report
    flags = "".join(f"<li>{escape(flag)}</li>" for flag in report.flags) or "<li>none</li>"
    window = (
        f"baseline {report.baseline_start:%Y-%m-%d %H:%M} to {report.recent_start:%Y-%m-%d %H:%M}"
        f" ({report.baseline_answers} answers), recent to {report.end:%Y-%m-%d %H:%M} UTC"
        f" ({report.recent_answers} answers)"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>freshkb drift report</title>
<style>{_STYLE}</style></head><body>
<h1>Drift report</h1>
<p>{escape(window)}</p>
<h2>Flags</h2><ul>{flags}</ul>
<h2>Figures</h2>
<table><tr><th>measure</th><th>baseline</th><th>recent</th><th>flag</th><th>threshold</th></tr>
{_figure_rows(report.figures)}</table>
{_figure_plot(report.figures, RATES, "Rates", "share of answers")}
<h2>Query topics</h2>
<table><tr><th>topic</th><th>baseline</th><th>share</th><th>recent</th><th>share</th></tr>
{_topic_rows(report)}</table>
{_topic_plot(report)}
{_map_plot(drift)}
<h2>New topics</h2>
<p>Recent questions farther than {report.novelty_threshold:.3f} from every baseline topic,
grouped by closeness; flagged groups are large enough to be new topics.</p>
<table><tr><th>group</th><th>questions</th><th>share</th><th>mean relevance</th>
<th>retrieval</th><th>examples</th></tr>{_new_rows(report)}</table>
<h2>Answers</h2>
{_histogram(drift, "answer_chars", "Answer length (characters)")}
{_histogram(drift, "latency_ms", "Latency (ms)")}
</body></html>
"""
