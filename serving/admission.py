"""Back-pressure: at most N requests run at once per worker process, at most M wait, and the
rest are turned away at once with a time to retry, instead of queueing without bound.

Two kinds of gate. `AsyncAdmissionGate` admits HTTP requests on the event loop, before a
worker thread is taken: `/v1/answer` and `/v1/search` each let `answer_concurrency` run (on
threads of their own, `limiter`), `answer_queue` wait up to `answer_queue_seconds`; a full
queue is 429 at once, a wait that runs out 503, both with Retry-After. `AdmissionGate` does the
same for blocking callers on threads: LLM calls (`llm_concurrency` run, the rest wait up to
`llm_queue_seconds`, then the answer quotes the documentation instead, degraded), so a slow
model never holds an answer hostage.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import anyio

from freshkb.core.errors import TransientError


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


def _waited_too_long(name: str, waited: float, retry_after: int) -> Overloaded:
    return Overloaded(
        f"{name}: no slot free within {waited:.1f}s; retry in {retry_after}s", 503, retry_after
    )


@dataclass
class AdmissionGate:
    """Lets `running` callers in at once and `waiting` more wait up to `wait_seconds`."""

    name: str
    running: int
    waiting: int
    wait_seconds: float

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.running)
        self._lock = threading.Lock()
        self._queued = 0
        self.turned_away = 0

    @property
    def retry_after(self) -> int:
        """Seconds a turned-away caller should wait: about one queue's worth of work."""
        return max(1, round(self.wait_seconds))

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Run the block in a slot; Overloaded (429 queue full, 503 waited too long) if not."""
        if not self._slots.acquire(blocking=False):
            self._wait_for_slot()
        try:
            yield
        finally:
            self._slots.release()

    def _wait_for_slot(self) -> None:
        with self._lock:
            if self._queued >= self.waiting:
                self.turned_away += 1
                raise _queue_full(self.name, self.running, self.waiting, self.retry_after)
            self._queued += 1
        started = time.monotonic()
        try:
            admitted = self._slots.acquire(timeout=self.wait_seconds)
        finally:
            with self._lock:
                self._queued -= 1
        if not admitted:
            self.turned_away += 1
            waited = time.monotonic() - started
            raise _waited_too_long(self.name, waited, self.retry_after) from None


@dataclass
class AsyncAdmissionGate:
    """The same gate for the event loop: admission costs no thread, refusal no wait.

    Waiters are served first come, first served. Run the admitted blocking work with
    `anyio.to_thread.run_sync(..., limiter=gate.limiter)`: threads of its own, as many as
    slots, so other routes never wait behind it in the shared thread pool. Use one gate from
    one event loop."""

    name: str
    running: int
    waiting: int
    wait_seconds: float

    def __post_init__(self) -> None:
        self.limiter = anyio.CapacityLimiter(self.running)
        self._busy = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self.turned_away = 0

    @classmethod
    def sized_as(cls, gate: AdmissionGate | AsyncAdmissionGate, name: str) -> AsyncAdmissionGate:
        """A gate of its own with the sizes of `gate`."""
        return cls(name, gate.running, gate.waiting, gate.wait_seconds)

    @property
    def retry_after(self) -> int:
        """Seconds a turned-away caller should wait: about one queue's worth of work."""
        return max(1, round(self.wait_seconds))

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
        """Run the block in a slot; Overloaded (429 queue full, 503 waited too long) if not."""
        if self._busy < self.running and not self._queue:
            self._busy += 1
        else:
            await self._wait_for_slot()
        try:
            yield
        finally:
            self._release()

    async def _wait_for_slot(self) -> None:
        if len(self._queue) >= self.waiting:
            self.turned_away += 1
            raise _queue_full(self.name, self.running, self.waiting, self.retry_after)
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(slot)
        started = time.monotonic()
        try:
            # shielded: a timeout or a disconnect must not cancel a slot already handed over
            await asyncio.wait_for(asyncio.shield(slot), self.wait_seconds)
        except TimeoutError:
            if slot.done():  # handed over as the wait ran out: take it
                return
            self._queue.remove(slot)
            self.turned_away += 1
            waited = time.monotonic() - started
            raise _waited_too_long(self.name, waited, self.retry_after) from None
        except asyncio.CancelledError:
            if slot.done():
                self._release()
            else:
                self._queue.remove(slot)
            raise

    def _release(self) -> None:
        """Hand the slot to the longest waiter, or free it."""
        if self._queue:
            self._queue.popleft().set_result(None)
        else:
            self._busy -= 1
