"""Back-pressure: at most N requests run at once per worker process, at most M wait, and the
rest are turned away at once with a time to retry, instead of queueing without bound.

Two kinds of gate. `AsyncAdmissionGate` admits HTTP requests on the event loop, before a
worker thread is taken: `/v1/answer` and `/v1/search` each let `answer_concurrency` run (on
threads of their own, `limiter`), `answer_queue` wait up to `answer_queue_seconds`; a full
queue, or one that would not drain within the wait at the pace the gate measures, is 429 at
once; a wait that still runs out is 503; both with Retry-After. `AdmissionGate` does the
same for blocking callers on threads: LLM calls (`llm_concurrency` run, the rest wait up to
`llm_queue_seconds`, then the answer quotes the documentation instead, degraded), so a slow
model never holds an answer hostage. It learns the pace too: a caller who would not get a slot
within its wait is turned away at once (the answer quotes now, instead of after the wait).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio

from freshkb.core.errors import TransientError

# Share of the wait a queued caller is planned to spend at most: the measured pace is an
# average and the time a slot is held varies, so plan within the wait, not up to its end.
PLANNED_SHARE = 0.8


class Overloaded(TransientError):
    """Too many requests: turned away, to be retried after `retry_after` seconds."""

    def __init__(self, message: str, status: int, retry_after: int):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _queue_full(name: str, running: int, waiting: int, retry_after: int) -> Overloaded:
    return Overloaded(
        f"{name}: {running} running and {waiting} waiting already; retry in {retry_after}s",
        429,
        retry_after,
    )


def _too_slow(
    name: str, running: int, waiting: int, eta: float, wait: float, retry_after: int
) -> Overloaded:
    return Overloaded(
        f"{name}: {running} running and {waiting} waiting already, about {eta:.1f}s to a slot, "
        f"too close to the {wait:g}s wait; retry in {retry_after}s",
        429,
        retry_after,
    )


def _waited_too_long(name: str, waited: float, retry_after: int) -> Overloaded:
    return Overloaded(
        f"{name}: no slot free within {waited:.1f}s; retry in {retry_after}s", 503, retry_after
    )


@dataclass
class PacedGate:
    """What both gates share: their sizes, and the pace they learn (how long a slot is held)."""

    name: str
    running: int
    waiting: int
    wait_seconds: float
    # how long a slot is held, a moving average (None until a slot was used)
    held_seconds: float | None = field(default=None, init=False, compare=False)
    turned_away: int = field(default=0, init=False, compare=False)

    @property
    def retry_after(self) -> int:
        """Seconds a turned-away caller should wait: about one queue's worth of work."""
        return max(1, round(self.wait_seconds))

    def expected_wait(self, position: int) -> float:
        """About how long the `position`-th waiter (from 1) waits for a slot; 0 if unknown."""
        return position * (self.held_seconds or 0.0) / self.running

    def _learn_pace(self, held: float) -> None:
        """Fold one slot's use into the pace, weighted towards the latest uses."""
        previous = self.held_seconds
        self.held_seconds = held if previous is None else 0.8 * previous + 0.2 * held


@dataclass
class AdmissionGate(PacedGate):
    """Lets `running` callers in at once and `waiting` more wait up to `wait_seconds`."""

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.running)
        self._lock = threading.Lock()
        self._queued = 0

    @contextmanager
    def admit(self, wait_seconds: float | None = None) -> Iterator[None]:
        """Run the block in a slot; Overloaded (429 queue full, 503 waited too long) if not.
        `wait_seconds` shortens the wait for this caller (a deadline of its own)."""
        if not self._slots.acquire(blocking=False):
            self._wait_for_slot(self.wait_seconds if wait_seconds is None else wait_seconds)
        entered = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._learn_pace(time.monotonic() - entered)
            self._slots.release()

    def _wait_for_slot(self, wait_seconds: float) -> None:
        with self._lock:
            eta = self.expected_wait(self._queued + 1)
            if self._queued >= self.waiting:
                self.turned_away += 1
                raise _queue_full(self.name, self.running, self.waiting, self.retry_after)
            if eta > PLANNED_SHARE * wait_seconds:
                self.turned_away += 1
                raise _too_slow(
                    self.name, self.running, self._queued, eta, wait_seconds, self.retry_after
                )
            self._queued += 1
        started = time.monotonic()
        try:
            admitted = self._slots.acquire(timeout=max(0.0, wait_seconds))
        finally:
            with self._lock:
                self._queued -= 1
        if not admitted:
            self.turned_away += 1
            waited = time.monotonic() - started
            raise _waited_too_long(self.name, waited, self.retry_after) from None


@dataclass(frozen=True)
class _Waiter:
    """A queued caller: the slot it will be handed, and by when it should have it."""

    slot: asyncio.Future[None]
    plan_by: float  # PLANNED_SHARE of its wait from its arrival


@dataclass
class AsyncAdmissionGate(PacedGate):
    """The same gate for the event loop: admission costs no thread, refusal no wait.

    Waiters are served first come, first served. The gate learns how long a slot is held (a
    moving average), so a caller who would likely not get a slot within `wait_seconds` is
    refused with 429 at once rather than with 503 at the end of the wait: on arrival, and
    from the back of the queue whenever the work turns out slower. Run the admitted blocking work
    with `anyio.to_thread.run_sync(..., limiter=gate.limiter)`: as many threads as slots, so
    other routes never wait behind it in the shared thread pool. One gate, one event loop."""

    def __post_init__(self) -> None:
        self.limiter = anyio.CapacityLimiter(self.running)
        self._busy = 0
        self._queue: deque[_Waiter] = deque()

    @classmethod
    def sized_as(cls, gate: PacedGate, name: str) -> AsyncAdmissionGate:
        """A gate of its own with the sizes of `gate`."""
        return cls(name, gate.running, gate.waiting, gate.wait_seconds)

    @property
    def busy(self) -> int:
        """Slots taken now."""
        return self._busy

    @property
    def queued(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._queue)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Run the block in a slot; Overloaded (429 queue full or too slow, 503 waited too
        long) if not."""
        if self._busy < self.running and not self._queue:
            self._busy += 1
        else:
            await self._wait_for_slot()
        entered = time.monotonic()
        try:
            yield
        finally:
            self._learn(time.monotonic() - entered)
            self._release()

    async def _wait_for_slot(self) -> None:
        eta = self.expected_wait(len(self._queue) + 1)
        if len(self._queue) >= self.waiting or eta > PLANNED_SHARE * self.wait_seconds:
            raise self._refuse(eta)
        started = time.monotonic()
        plan_by = started + PLANNED_SHARE * self.wait_seconds
        waiter = _Waiter(asyncio.get_running_loop().create_future(), plan_by)
        self._queue.append(waiter)
        try:
            # shielded: a timeout or a disconnect must not cancel a slot already handed over
            await asyncio.wait_for(asyncio.shield(waiter.slot), self.wait_seconds)
        except TimeoutError:
            if waiter.slot.done():  # settled as the wait ran out: a slot to take, or a refusal
                waiter.slot.result()
                return
            self._queue.remove(waiter)
            self.turned_away += 1
            waited = time.monotonic() - started
            raise _waited_too_long(self.name, waited, self.retry_after) from None
        except asyncio.CancelledError:
            if not waiter.slot.done():
                self._queue.remove(waiter)
            elif waiter.slot.exception() is None:
                self._release()  # handed a slot it will not use: pass it on
            raise

    def _refuse(self, eta: float) -> Overloaded:
        """429 now: the queue is full, or a slot would not free up within the wait."""
        self.turned_away += 1
        if len(self._queue) >= self.waiting:
            return _queue_full(self.name, self.running, self.waiting, self.retry_after)
        waiting = len(self._queue)
        return _too_slow(self.name, self.running, waiting, eta, self.wait_seconds, self.retry_after)

    def _learn(self, held: float) -> None:
        """Update how long a slot is held, and refuse at once the waiters it now says would
        not get a slot within their wait (from the back: the front is served first)."""
        self._learn_pace(held)
        now = time.monotonic()
        while self._queue:
            last = self._queue[-1]
            eta = self.expected_wait(len(self._queue) - 1)  # one slot frees now
            if now + eta <= last.plan_by:
                break
            self._queue.pop()
            last.slot.set_exception(self._refuse(eta))

    def _release(self) -> None:
        """Hand the slot to the longest waiter, or free it."""
        if self._queue:
            self._queue.popleft().slot.set_result(None)
        else:
            self._busy -= 1
