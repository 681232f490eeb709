"""Back-pressure: the admission gate lets N run, M wait, and turns the rest away at once."""

from __future__ import annotations

import threading
import time

import pytest

from freshkb.serving.admission import AdmissionGate, Overloaded


def hold(gate: AdmissionGate, release: threading.Event, entered: threading.Event) -> None:
    """Take a slot and keep it until `release` is set."""
    with gate.admit():
        entered.set()
        release.wait(10)


def test_a_full_queue_turns_callers_away_at_once_with_429():
    gate = AdmissionGate("answers", running=1, waiting=1, wait_seconds=5)
    release, entered = threading.Event(), threading.Event()
    runner = threading.Thread(target=hold, args=(gate, release, entered))
    runner.start()
    assert entered.wait(5)
    waiter_in = threading.Event()
    waiter = threading.Thread(target=hold, args=(gate, threading.Event(), waiter_in))
    waiter.start()
    time.sleep(0.2)  # the waiter is queued now
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused, gate.admit():
        pass
    assert time.monotonic() - started < 0.5, "turned away at once, not after a wait"
    assert refused.value.status == 429 and refused.value.retry_after == 5
    release.set()
    runner.join(5)
    assert waiter_in.wait(5), "the queued caller got the freed slot"
    waiter.join(15)
    assert gate.turned_away == 1


def test_a_wait_that_runs_out_is_503():
    gate = AdmissionGate("llm", running=1, waiting=5, wait_seconds=0.3)
    release, entered = threading.Event(), threading.Event()
    runner = threading.Thread(target=hold, args=(gate, release, entered))
    runner.start()
    assert entered.wait(5)
    started = time.monotonic()
    with pytest.raises(Overloaded) as timed_out, gate.admit():
        pass
    assert 0.25 < time.monotonic() - started < 2
    assert timed_out.value.status == 503 and timed_out.value.retry_after == 1
    release.set()
    runner.join(5)
    with gate.admit():  # the slot is free again
        pass


def test_slots_are_released_when_the_block_raises():
    gate = AdmissionGate("answers", running=1, waiting=0, wait_seconds=1)
    with pytest.raises(ValueError), gate.admit():
        raise ValueError("boom")
    with gate.admit():
        pass
