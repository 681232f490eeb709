"""Back-pressure: at most N requests run at once per worker process, at most M wait, and the
rest are turned away at once with a time to retry, instead of queueing without bound.

Two gates use it. Answers: `answer_concurrency` run, `answer_queue` wait up to
`answer_queue_seconds`; a full queue is 429, a wait that runs out 503, both with Retry-After.
LLM calls: `llm_concurrency` run and the rest wait up to `llm_queue_seconds`, then the answer
quotes the documentation instead (degraded), so a slow model never holds an answer hostage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from freshkb.core.errors import TransientError


class Overloaded(TransientError):
    """Too many requests: turned away, to be retried after `retry_after` seconds."""

    def __init__(self, message: str, status: int, retry_after: int):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


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
                raise Overloaded(
                    f"{self.name}: {self.running} running and {self.waiting} waiting already; "
                    f"retry in {self.retry_after}s",
                    429,
                    self.retry_after,
                )
            self._queued += 1
        started = time.monotonic()
        try:
            admitted = self._slots.acquire(timeout=self.wait_seconds)
        finally:
            with self._lock:
                self._queued -= 1
        if not admitted:
            self.turned_away += 1
            raise Overloaded(
                f"{self.name}: no slot free within {time.monotonic() - started:.1f}s; "
                f"retry in {self.retry_after}s",
                503,
                self.retry_after,
            )
