"""Group commit: rows written by concurrent callers go to the database together.

Every answer writes a row to the answer log and one to the audit table. One transaction each
costs a connection checkout, a statement compiled and run, and a commit: under 16 concurrent
clients those writes held about a sixth of the serve process's samples (py-spy, waiting
included), and 1.5 ms of CPU per answer measured alone (bench/log_writes.py), most of it
Python around the database rather than the database. `GroupCommit` writes whatever rows have
queued up meanwhile in one transaction (an executemany), led by whichever caller gets there
first, and every caller returns only once its own row is committed or has failed: as durable as
one transaction each, no thread of its own, and a lone caller waits for nothing.

When a batch fails because of a row's data (`isolate` says which errors those are: a duplicate
key, a value the column refuses), its rows are written again one by one, so a bad row fails
only its own caller. Any other failure (the database down, locked, unreachable) is every
caller's at once, after one attempt: no caller waits for a row-by-row retry of an outage.
A write function must not submit to its own GroupCommit (it would wait for itself): that raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Rows per transaction at most: bounds a transaction's length and the wait of its followers.
MAX_BATCH = 128


class WriteInterrupted(RuntimeError):
    """The transaction holding this row was interrupted (KeyboardInterrupt, SystemExit) before
    the row was written."""


@dataclass(eq=False)
class _Pending(Generic[T]):
    """One caller's row, and once written, whether it failed."""

    row: T
    finished: bool = False
    error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Writes the rows of concurrent callers in shared transactions; see the module docstring.

    `write` commits a list of rows in one transaction (or raises, having committed none);
    `isolate` is true of an error one row's data can cause (default: none is).
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], None],
        isolate: Callable[[Exception], bool] = lambda exc: False,
        max_batch: int = MAX_BATCH,
    ):
        self._write = write
        self._isolate = isolate
        self.max_batch = max_batch
        self.transactions = 0  # transactions committed (a test reads it)
        self._queue: list[_Pending[T]] = []
        self._writing = False
        self._turn = threading.Condition()
        self._in_write = threading.local()

    def submit(self, row: T) -> None:
        """Write one row; returns once it is committed, or raises what writing it raised."""
        if getattr(self._in_write, "active", False):
            raise RuntimeError("GroupCommit.submit called from its own write function")
        mine = _Pending(row)
        with self._turn:
            self._queue.append(mine)
        try:
            self._until_settled(mine)
        except BaseException:
            with self._turn:  # interrupted while still queued: never written, nobody waits
                if any(pending is mine for pending in self._queue):
                    self._queue.remove(mine)
            raise
        if mine.error is not None:
            raise mine.error

    def _until_settled(self, mine: _Pending[T]) -> None:
        """Wait while another caller writes; lead a batch whenever nobody does, until `mine`
        is written or has failed."""
        while True:
            with self._turn:
                while self._writing and not mine.finished:
                    self._turn.wait()
                if mine.finished:
                    return
                self._writing = True
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                self._write_batch(batch)
            finally:
                with self._turn:
                    self._writing = False
                    self._turn.notify_all()

    def _write_batch(self, batch: list[_Pending[T]]) -> None:
        """Write the batch together; on a row's data error each row alone, on any other error
        fail them all; rows an interruption left unsettled fail with WriteInterrupted."""
        settled = 0
        self._in_write.active = True
        try:
            try:
                self._write([pending.row for pending in batch])
                self.transactions += 1
            except Exception as exc:
                if len(batch) > 1 and self._isolate(exc):
                    for pending in batch:
                        pending.error = self._write_alone(pending.row)
                        settled += 1
                for pending in batch[settled:]:
                    pending.error = exc
            settled = len(batch)
        finally:
            self._in_write.active = False
            for pending in batch[settled:]:
                pending.error = WriteInterrupted("the transaction holding this row was interrupted")
            for pending in batch:
                pending.finished = True

    def _write_alone(self, row: T) -> Exception | None:
        """Write one row in a transaction of its own; what failed it, if anything."""
        try:
            self._write([row])
        except Exception as exc:
            return exc
        self.transactions += 1
        return None
