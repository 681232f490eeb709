"""Back-pressure: the admission gates (threads, event loop) let N run, M wait, and turn the rest
away at once."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio.to_thread
import pytest

from freshkb.serving.admission import AdmissionGate, AsyncAdmissionGate, Overloaded


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


def test_a_caller_the_measured_pace_cannot_serve_in_time_is_turned_away_at_once():
    # The LLM gate: an answer that would wait out its LLM wait only to quote the documentation
    # anyway quotes at once instead.
    gate = AdmissionGate("llm", running=1, waiting=10, wait_seconds=1.0)
    with gate.admit():
        time.sleep(0.6)
    assert gate.held_seconds == pytest.approx(0.6, abs=0.1)
    release, entered = threading.Event(), threading.Event()
    runner = threading.Thread(target=hold, args=(gate, release, entered))
    runner.start()
    assert entered.wait(5)
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused, gate.admit(wait_seconds=0.5):
        pass  # ~0.6 s to a slot: over 0.8 of this caller's 0.5 s
    assert time.monotonic() - started < 0.1, "turned away at once, not after its wait"
    assert refused.value.status == 429 and "about 0.6s to a slot" in str(refused.value)
    waiter_in, done = threading.Event(), threading.Event()
    done.set()  # ~0.6 s to a slot: within 0.8 of the 1 s wait, so it waits
    waiter = threading.Thread(target=hold, args=(gate, done, waiter_in))
    waiter.start()
    time.sleep(0.1)
    release.set()
    assert waiter_in.wait(5), "a caller the pace serves in time waited and got the slot"
    runner.join(5)
    waiter.join(5)
    assert gate.turned_away == 1


def test_slots_are_released_when_the_block_raises():
    gate = AdmissionGate("answers", running=1, waiting=0, wait_seconds=1)
    with pytest.raises(ValueError), gate.admit():
        raise ValueError("boom")
    with gate.admit():
        pass


# -- the event-loop gate of the HTTP routes ----------------------------------------------------


async def hold_async(gate: AsyncAdmissionGate, release: asyncio.Event, log: list[str], name: str):
    """Take a slot on the event loop, note it, and keep it until `release` is set."""
    async with gate.admit():
        log.append(name)
        await release.wait()


def test_event_loop_gate_refuses_beyond_the_queue_at_once_and_serves_waiters_in_order():
    async def scenario() -> None:
        gate = AsyncAdmissionGate("answers", running=2, waiting=2, wait_seconds=30)
        release, log = asyncio.Event(), []
        tasks = [asyncio.create_task(hold_async(gate, release, log, f"c{n}")) for n in range(4)]
        await asyncio.sleep(0.05)
        assert log == ["c0", "c1"] and gate.busy == 2 and gate.queued == 2
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            async with gate.admit():
                pass
        assert time.monotonic() - started < 0.05, "turned away at once, not after a wait"
        assert refused.value.status == 429 and refused.value.retry_after == 30
        assert "2 running and 2 waiting already" in str(refused.value)
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert log == ["c0", "c1", "c2", "c3"], "waiters are served first come, first served"
        assert gate.busy == 0 and gate.queued == 0 and gate.turned_away == 1

    asyncio.run(scenario())


def test_event_loop_gate_wait_that_runs_out_is_503_and_frees_its_place():
    async def scenario() -> None:
        gate = AsyncAdmissionGate("search", running=1, waiting=1, wait_seconds=0.3)
        release = asyncio.Event()
        runner = asyncio.create_task(hold_async(gate, release, [], "runner"))
        await asyncio.sleep(0.02)
        started = time.monotonic()
        with pytest.raises(Overloaded) as timed_out:
            async with gate.admit():
                pass
        assert 0.25 < time.monotonic() - started < 2
        assert timed_out.value.status == 503 and timed_out.value.retry_after == 1
        assert gate.queued == 0, "the timed-out waiter left the queue"
        release.set()
        await runner
        async with gate.admit():  # the slot is free again
            assert gate.busy == 1
        assert gate.busy == 0

    asyncio.run(scenario())


def test_event_loop_gate_cancelled_waiter_and_raising_block_leak_no_slot():
    async def scenario() -> None:
        gate = AsyncAdmissionGate("answers", running=1, waiting=5, wait_seconds=30)
        release = asyncio.Event()
        runner = asyncio.create_task(hold_async(gate, release, [], "runner"))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(hold_async(gate, asyncio.Event(), [], "gone"))
        await asyncio.sleep(0.02)
        assert gate.queued == 1
        gone.cancel()  # a client that disconnected while queued
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert gate.queued == 0
        release.set()
        await runner
        with pytest.raises(ValueError):
            async with gate.admit():
                raise ValueError("boom")
        assert gate.busy == 0 and gate.queued == 0

    asyncio.run(scenario())


def test_event_loop_gate_runs_at_most_its_slots_and_leaves_the_shared_thread_pool_free():
    running, most, shared_pool_used = 0, 0, 0.0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def call(gate: AsyncAdmissionGate) -> int:
        try:
            async with gate.admit():
                await anyio.to_thread.run_sync(work, limiter=gate.limiter)
            return 200
        except Overloaded as exc:
            return exc.status

    async def scenario() -> list[int]:
        nonlocal shared_pool_used
        gate = AsyncAdmissionGate("answers", running=3, waiting=6, wait_seconds=30)
        calls = asyncio.gather(*(call(gate) for _ in range(20)))
        shared = anyio.to_thread.current_default_thread_limiter()
        while not calls.done():
            shared_pool_used = max(shared_pool_used, shared.borrowed_tokens)
            await asyncio.sleep(0.01)
        return list(await calls)

    codes = asyncio.run(scenario())
    assert most == 3, f"{most} threads worked at once"
    assert shared_pool_used == 0, "the admitted work took threads of the shared pool"
    assert codes.count(200) == 9 and codes.count(429) == 11, codes


async def attempt(gate: AsyncAdmissionGate, hold_for: float) -> tuple[int, float]:
    """(status, seconds to the outcome) of one caller that holds a slot for `hold_for`."""
    started = time.monotonic()
    try:
        async with gate.admit():
            entered = time.monotonic() - started
            await asyncio.sleep(hold_for)
        return 200, entered
    except Overloaded as exc:
        return exc.status, time.monotonic() - started


def test_event_loop_gate_refuses_at_once_a_caller_the_measured_pace_cannot_serve_in_time():
    async def scenario() -> None:
        gate = AsyncAdmissionGate("answers", running=1, waiting=10, wait_seconds=1)
        assert await attempt(gate, 0.6) == (200, pytest.approx(0.0, abs=0.05))
        assert gate.held_seconds == pytest.approx(0.6, abs=0.1)
        runner = asyncio.create_task(attempt(gate, 0.6))
        queued = asyncio.create_task(attempt(gate, 0.0))  # ~0.6 s to a slot: within the wait
        await asyncio.sleep(0.02)
        status, seconds = await attempt(gate, 0.0)  # ~1.2 s to a slot: over the 1 s wait
        assert (status, gate.queued) == (429, 1) and seconds < 0.05
        assert (await runner)[0] == 200 and (await queued)[0] == 200

    asyncio.run(scenario())


def test_event_loop_gate_sheds_the_back_of_the_queue_as_soon_as_work_proves_slow():
    async def scenario() -> None:
        gate = AsyncAdmissionGate("answers", running=1, waiting=10, wait_seconds=1)
        runner = asyncio.create_task(attempt(gate, 0.7))  # nothing measured yet
        await asyncio.sleep(0.01)
        waiters = [asyncio.create_task(attempt(gate, 0.7)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert gate.queued == 3
        outcomes = await asyncio.gather(*waiters)
        await runner
        # At 0.7 s the first waiter gets the slot; the two behind it would get one at 1.4 s
        # and 2.1 s, after their 1 s wait, so they hear 429 at 0.7 s, not 503 at 1 s.
        assert outcomes[0][0] == 200
        assert [status for status, _ in outcomes[1:]] == [429, 429]
        assert all(0.6 < seconds < 0.9 for _, seconds in outcomes[1:]), outcomes
        assert gate.busy == 0 and gate.queued == 0 and gate.turned_away == 2

    asyncio.run(scenario())
