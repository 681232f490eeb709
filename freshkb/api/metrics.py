"""The answer service's Prometheus metrics, in a registry of each app's own.

Three kinds, by where they come from:
- observed as requests pass: latency per route template (never the raw path, whose ids would
  make a series per answer), and per answer stage; answers by mode and with citations;
  hallucination signals by name; LLM tokens and estimated cost;
- read from the service at scrape time: LLM calls by outcome (ok, error, timeout, busy,
  circuit_open, budget: skipped or cut off by the answer's time budget), the breaker's state,
  answer-log writes that failed;
- read from the freshness ledger at scrape time, where Prefect flow runs record what they did:
  per source the freshness lag, SLA and state, the last validation verdict, ingest runs by
  status, their durations, and the documents of the last successful run.

Rates are for PromQL: citation rate = freshkb_answers_cited_total / freshkb_answers_total,
refusal (escalation, degraded) rate = freshkb_answers_total{mode="refused"} / the sum, cost
per request = rate(freshkb_answer_cost_usd_total) / rate(freshkb_answers_total).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from freshkb.serving.answerer import OpenAICompatibleAnswerer
from freshkb.serving.results import AnswerResult
from freshkb.serving.service import AnswerService
from freshkb.serving.signals import SIGNALS
from freshkb.store.ledger import Ledger, runs_table
from freshkb.validation.freshness import FreshnessState

MODES = ("normal", "degraded", "escalated", "refused")
LLM_OUTCOMES = ("ok", "error", "timeout", "busy", "circuit_open", "budget")
# From a cached search (milliseconds) to a slow LLM call (the default timeout is 20 s).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
UNMATCHED = "unmatched"  # requests no route took: one series, whatever the path


class ServiceMetrics:
    """The metrics of one app; `exposition()` is what GET /metrics sends."""

    def __init__(self, service: AnswerService | None):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "freshkb_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "freshkb_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "freshkb_answer_stage_seconds",
            "seconds an answer spent per stage (safety, retrieve, screen, llm, output_screen)",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.answers = Counter("freshkb_answers", "answers by mode", ["mode"], registry=registry)
        self.cited = Counter(
            "freshkb_answers_cited", "answers citing a passage", ["mode"], registry=registry
        )
        self.signals = Counter(
            "freshkb_hallucination_signals",
            "answers raising each hallucination signal",
            ["signal"],
            registry=registry,
        )
        self.tokens = Counter("freshkb_llm_tokens", "LLM tokens", ["kind"], registry=registry)
        self.cost = Counter(
            "freshkb_answer_cost_usd", "estimated LLM cost of the answers", registry=registry
        )
        for mode in MODES:  # every series exists from the first scrape, at zero
            self.answers.labels(mode)
            self.cited.labels(mode)
        for signal in SIGNALS:
            self.signals.labels(signal)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind)
        if service is not None:
            registry.register(ServiceCollector(service))

    def observe_answer(self, result: AnswerResult) -> None:
        """Count one answer: its mode, citations, stages, signals, tokens and cost."""
        self.answers.labels(result.mode).inc()
        if result.citations:
            self.cited.labels(result.mode).inc()
        for stage, ms in result.timings_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1000)
        for signal in result.signals:
            self.signals.labels(signal).inc()
        for kind, count in result.tokens.items():
            self.tokens.labels(kind).inc(count)
        self.cost.inc(result.cost_usd)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def app_metrics(request: Request) -> ServiceMetrics:
    """The metrics `create_app` put on the app serving this request."""
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


class RequestMetrics:
    """ASGI middleware timing every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; count it once its response has gone (or it failed)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router writes the matched route into the scope it was given, which is ours.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(scope["method"], route, status, elapsed)


class ServiceCollector:
    """Reads the service's own state, and its ledger, when Prometheus scrapes."""

    def __init__(self, service: AnswerService):
        self.service = service

    def collect(self) -> Iterator[Metric]:
        """The LLM calls and breaker, failed answer-log writes, then the ledger's metrics."""
        answerer = self.service.answerer
        if isinstance(answerer, OpenAICompatibleAnswerer):
            calls = CounterMetricFamily(
                "freshkb_llm_calls", "LLM calls by how they ended", labels=["outcome"]
            )
            counted = dict(answerer.outcomes)
            for outcome in LLM_OUTCOMES:
                calls.add_metric([outcome], counted.get(outcome, 0))
            yield calls
            yield GaugeMetricFamily(
                "freshkb_llm_circuit_open",
                "1 while the LLM circuit breaker refuses calls",
                value=1.0 if answerer.breaker.is_open else 0.0,
            )
        journal = self.service.journal
        if journal is not None:
            yield CounterMetricFamily(
                "freshkb_answer_log_write_failures",
                "answers the answer log could not record (each one still served)",
                value=journal.failures,
            )
        yield from ledger_metrics(self.service.ledger)


def ledger_metrics(ledger: Ledger) -> Iterator[Metric]:
    """Freshness per source and ingest runs, from the ledger; freshkb_ledger_up 0 without it."""
    try:
        states = ledger.states()
        table = runs_table
        with ledger.engine.connect() as connection:
            runs = connection.execute(
                sa.select(table.c.source, table.c.status, table.c.started_at, table.c.finished_at)
            ).all()
            failed = connection.execute(
                sa.select(table.c.source, table.c.report).where(table.c.status == "failed")
            ).all()
    except SQLAlchemyError:
        yield GaugeMetricFamily("freshkb_ledger_up", "1 when the ledger could be read", value=0)
        return
    yield GaugeMetricFamily("freshkb_ledger_up", "1 when the ledger could be read", value=1)
    yield from _freshness_metrics(states)
    yield from _run_metrics(runs)
    yield _validation_failures(failed, {run[0] for run in runs})


def _freshness_metrics(states: Iterable[Any]) -> Iterator[Metric]:
    """Lag, SLA, state, last validation verdict and last successful run's documents."""
    lag = GaugeMetricFamily(
        "freshkb_source_freshness_lag_seconds",
        "seconds since the source's last successful validated sync (NaN: never)",
        labels=["source", "kind"],
    )
    sla = GaugeMetricFamily(
        "freshkb_source_freshness_sla_seconds", "the source's freshness SLA", labels=["source"]
    )
    state = GaugeMetricFamily(
        "freshkb_source_state", "1 for the source's freshness state", labels=["source", "state"]
    )
    failed = GaugeMetricFamily(
        "freshkb_source_validation_failed",
        "1 when the source's last validation failed",
        labels=["source"],
    )
    documents = GaugeMetricFamily(
        "freshkb_source_documents",
        "documents of the source's last successful ingest run, by outcome",
        labels=["source", "outcome"],
    )
    for source in states:
        lag.add_metric([source.name, source.kind], _number(source.age_seconds))
        sla.add_metric([source.name], _number(source.sla_seconds))
        for name in FreshnessState:
            state.add_metric([source.name, name.value], float(source.state is name))
        failed.add_metric([source.name], float(source.validation.get("success") is False))
        for field, count in source.counts.items():
            if field.startswith("documents_"):
                documents.add_metric([source.name, field.removeprefix("documents_")], count)
    yield from (lag, sla, state, failed, documents)


def _run_metrics(runs: Iterable[Any]) -> Iterator[Metric]:
    """Ingest runs by status and their durations, per source."""
    counted: dict[tuple[str, str], int] = defaultdict(int)
    durations: dict[str, list[float]] = defaultdict(list)
    last: dict[str, tuple[datetime, float]] = {}
    for source, status, started, finished in runs:
        counted[(source, status)] += 1
        if finished is not None:
            seconds = (finished - started).total_seconds()
            durations[source].append(seconds)
            if source not in last or finished > last[source][0]:
                last[source] = (finished, seconds)
    total = CounterMetricFamily(
        "freshkb_ingest_runs", "ingest runs by status", labels=["source", "status"]
    )
    for (source, status), count in sorted(counted.items()):
        total.add_metric([source, status], count)
    spent = SummaryMetricFamily(
        "freshkb_ingest_run_duration_seconds", "duration of finished ingest runs", labels=["source"]
    )
    latest = GaugeMetricFamily(
        "freshkb_ingest_last_run_duration_seconds",
        "duration of the source's latest finished run",
        labels=["source"],
    )
    for source, seconds in sorted(durations.items()):
        spent.add_metric([source], count_value=len(seconds), sum_value=sum(seconds))
        latest.add_metric([source], last[source][1])
    yield from (total, spent, latest)


def _validation_failures(failed: Iterable[Any], sources: set[str]) -> Metric:
    """Runs whose validation failed (their reports, as the ledger keeps them), per source."""
    refused: dict[str, int] = defaultdict(int)
    for source, report in failed:
        verdict = json.loads(report or "{}").get("validation") or {}
        refused[source] += verdict.get("success") is False
    failures = CounterMetricFamily(
        "freshkb_validation_failures", "ingest runs refused by validation", labels=["source"]
    )
    for source in sorted(sources):
        failures.add_metric([source], refused.get(source, 0))
    return failures


def _number(value: float | None) -> float:
    """A gauge's value; NaN for unknown, as Prometheus writes it."""
    return math.nan if value is None else float(value)
