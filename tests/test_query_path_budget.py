"""An answer's time budget bounds its LLM call (serving/answerer.py `answer_deadline`), against
a real HTTP server that is slow on purpose: the call is skipped when no time is left, cut off
at the deadline otherwise, and neither counts as the endpoint failing."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from reliability.faulty_llm import FaultyLLM, faulty_llm_server

from freshkb.core.config import Settings
from freshkb.core.errors import LLMUnavailable
from freshkb.serving.answerer import OpenAICompatibleAnswerer, Passage, answer_deadline

PORT = int(os.environ.get("FRESHKB_TEST_LLM_PORT", "18091")) + 29
PASSAGES = [Passage("S1", "chunk-1", "Returns", "Unworn boots may be returned within 30 days.")]


@pytest.fixture
def slow_llm() -> Iterator[tuple[FaultyLLM, OpenAICompatibleAnswerer]]:
    """A model that takes 5 s to answer, and a client that would wait 20 s for it."""
    with faulty_llm_server(PORT) as llm:
        llm.mode, llm.delay = "slow", 5.0
        answerer = OpenAICompatibleAnswerer(Settings(llm_base_url=llm.base_url, llm_timeout=20))
        yield llm, answerer
        answerer.close()


@pytest.mark.timeout(60)
def test_a_call_is_cut_off_at_the_deadline_and_does_not_open_the_circuit(
    slow_llm: tuple[FaultyLLM, OpenAICompatibleAnswerer],
) -> None:
    llm, answerer = slow_llm
    for _ in range(answerer.breaker.failures + 1):
        started = time.monotonic()
        with answer_deadline(time.monotonic() + 1.5), pytest.raises(LLMUnavailable) as raised:
            answerer.answer("Can I return boots?", PASSAGES)
        assert time.monotonic() - started < 3.0  # not the 5 s reply, nor the 20 s timeout
        assert "answer budget" in str(raised.value)
    assert answerer.outcomes["budget"] == answerer.breaker.failures + 1
    assert not answerer.breaker.is_open
    assert llm.completions == answerer.breaker.failures + 1


@pytest.mark.timeout(30)
def test_no_call_is_made_when_the_budget_is_spent(
    slow_llm: tuple[FaultyLLM, OpenAICompatibleAnswerer],
) -> None:
    llm, answerer = slow_llm
    started = time.monotonic()
    with answer_deadline(time.monotonic() + 0.5), pytest.raises(LLMUnavailable, match="budget"):
        answerer.answer("Can I return boots?", PASSAGES)
    assert time.monotonic() - started < 0.5
    assert llm.completions == 0 and answerer.outcomes["budget"] == 1


@pytest.mark.timeout(30)
def test_a_reply_within_the_budget_is_served(
    slow_llm: tuple[FaultyLLM, OpenAICompatibleAnswerer],
) -> None:
    llm, answerer = slow_llm
    llm.mode = "healthy"
    with answer_deadline(time.monotonic() + 10):
        completion = answerer.answer("Can I return unworn boots?", PASSAGES)
    assert completion.text and answerer.outcomes["ok"] == 1
    assert answerer.call_seconds is not None  # the pace the next budget is judged by


@pytest.mark.timeout(60)
def test_an_answer_the_busy_llm_cannot_take_in_time_quotes_at_once(
    slow_llm: tuple[FaultyLLM, OpenAICompatibleAnswerer],
) -> None:
    # One call slot, calls of about 1.5 s: a second answer would wait 1.5 s for the slot, more
    # than 0.8 of the 1 s it may wait, so it is told at once, not after waiting it out.
    llm, _ = slow_llm
    llm.mode, llm.delay = "slow", 1.5
    answerer = OpenAICompatibleAnswerer(
        Settings(llm_base_url=llm.base_url, llm_concurrency=1, llm_queue_seconds=1.0)
    )
    try:
        answerer.answer("Can I return unworn boots?", PASSAGES)  # learns the pace
        first = ThreadPoolExecutor(1).submit(answerer.answer, "Can I return boots?", PASSAGES)
        time.sleep(0.3)  # the first call holds the only slot now
        started = time.monotonic()
        with pytest.raises(LLMUnavailable, match=r"LLM busy.*to a slot"):
            answerer.answer("And worn boots?", PASSAGES)
        assert time.monotonic() - started < 0.3, "quoted at once, not after a 1 s wait"
        assert first.result(10).text and answerer.outcomes["busy"] == 1
        assert llm.completions == 2
    finally:
        answerer.close()
