"""What one answer costs, from its measured tokens and LLM time and the configured prices, and
what a month of answers would cost at a given daily volume.

Two price models, as operators pay for an LLM: a hosted API bills tokens
(`llm_price_prompt_per_1k`, `llm_price_completion_per_1k`); a self-hosted server bills GPU
hours (`llm_gpu_hour_usd`), shared by the calls it runs at once, so one call costs its time
divided by `llm_concurrency`. Token prices win when any is set; set the one model that
applies. Everything but the LLM (retrieval, embedding, the checks) is counted as free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from freshkb.core.config import Settings
from freshkb.serving.answer_log import LoggedAnswer

SECONDS_PER_HOUR = 3600.0
DAYS_PER_MONTH = 30


def answer_cost(
    prompt_tokens: float, completion_tokens: float, llm_seconds: float, settings: Settings
) -> float:
    """The estimated USD cost of one answer's LLM call (0.0 when no price is configured)."""
    per_prompt = settings.llm_price_prompt_per_1k
    per_completion = settings.llm_price_completion_per_1k
    if per_prompt or per_completion:
        return (prompt_tokens * per_prompt + completion_tokens * per_completion) / 1000
    gpu_hours = llm_seconds / SECONDS_PER_HOUR / settings.llm_concurrency
    return gpu_hours * settings.llm_gpu_hour_usd


@dataclass(frozen=True)
class CostProjection:
    """The measured LLM use per answer, priced today, projected to a month at a daily volume."""

    answers: int
    prompt_tokens_per_answer: float
    completion_tokens_per_answer: float
    llm_seconds_per_answer: float
    cost_per_query_usd: float
    queries_per_day: float
    monthly_cost_usd: float


def project_cost(
    entries: Sequence[LoggedAnswer], queries_per_day: float, settings: Settings
) -> CostProjection:
    """Means per logged answer, refusals included (they are queries too, and call no LLM),
    priced at the configured prices; cost is linear, so the mean's cost is the mean cost."""
    if not entries:
        raise ValueError("no answers to project from")
    count = len(entries)
    prompt = sum(e.prompt_tokens for e in entries) / count
    completion = sum(e.completion_tokens for e in entries) / count
    seconds = sum(e.llm_seconds for e in entries) / count
    per_query = answer_cost(prompt, completion, seconds, settings)
    return CostProjection(
        answers=count,
        prompt_tokens_per_answer=round(prompt, 1),
        completion_tokens_per_answer=round(completion, 1),
        llm_seconds_per_answer=round(seconds, 3),
        cost_per_query_usd=per_query,
        queries_per_day=queries_per_day,
        monthly_cost_usd=per_query * queries_per_day * DAYS_PER_MONTH,
    )
