"""Group commit: rows written by concurrent callers go to the database together.

Every answer writes a row to the answer log and one to the audit table. One transaction each
costs a connection checkout, a statement compiled and run, and a commit: under 16 concurrent
clients those writes took about a sixth of the serve process's samples (py-spy), most of it
Python around the database rather than the database. `GroupCommit` writes whatever rows have
queued up meanwhile in one transaction (an executemany), led by whichever caller gets there
first, and every caller returns only once its own row is committed or has failed: as durable as
one transaction each, no thread of its own, and a lone caller waits for nothing.

A batch that fails is written again row by row, so one bad row fails only its own caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Rows per transaction at most: bounds a transaction's length and the wait of its followers.
MAX_BATCH = 128


@dataclass
class _Pending(Generic[T]):
    """One caller's row, and once written, whether it failed."""

    row: T
    finished: bool = False
    error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Writes the rows of concurrent callers in shared transactions; see the module docstring.

    `write` commits a list of rows in one transaction (or raises, having committed none).
    """

    def __init__(self, write: Callable[[Sequence[T]], None], max_batch: int = MAX_BATCH):
        self._write = write
        self.max_batch = max_batch
        self.transactions = 0  # batches written, for tests and metrics
        self._queue: list[_Pending[T]] = []
        self._writing = False
        self._turn = threading.Condition()

    def submit(self, row: T) -> None:
        """Write one row; returns once it is committed, or raises what writing it raised."""
        mine = _Pending(row)
        with self._turn:
            self._queue.append(mine)
        while True:
            with self._turn:
                while self._writing and not mine.finished:
                    self._turn.wait()
                if mine.finished:
                    break
                # Nobody is writing and this row is still queued: lead the next batch.
                self._writing = True
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                self._write_batch(batch)
            finally:
                with self._turn:
                    self._writing = False
                    self._turn.notify_all()
        if mine.error is not None:
            raise mine.error

    def _write_batch(self, batch: list[_Pending[T]]) -> None:
        """Write the batch together; if that fails, each row alone, so each gets its own fate."""
        try:
            self._write([pending.row for pending in batch])
            self.transactions += 1
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for pending in batch:
                    try:
                        self._write([pending.row])
                        self.transactions += 1
                    except Exception as alone:
                        pending.error = alone
        finally:
            for pending in batch:
                pending.finished = True
