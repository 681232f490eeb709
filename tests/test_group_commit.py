"""Group commit (core/group_commit.py): concurrent rows share transactions, each caller returns
once its own row is committed, a bad row fails only its own caller, an outage fails every
caller at once, and an interrupted transaction never passes for a committed one. Also the
answer log and the credential audit writing through it to a real SQLite file."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pytest

from freshkb.core.group_commit import GroupCommit, WriteInterrupted
from freshkb.serving.answer_log import AnswerLog, LoggedAnswer
from freshkb.serving.audit import ActedFor, AnswerAudit

pytestmark = pytest.mark.timeout(60)  # a caller that never returns fails here, not at 900 s

CALLERS = 16


class SlowTable:
    """A table whose transactions take a while, so callers pile up behind one. It refuses a
    batch holding `refuse` (a row's data), every batch while `down` (an outage), and its
    transaction number `interrupt_at` (from 0) is interrupted (KeyboardInterrupt)."""

    def __init__(
        self,
        seconds: float = 0.05,
        refuse: str | None = None,
        down: bool = False,
        interrupt_at: int | None = None,
    ):
        self.seconds = seconds
        self.refuse = refuse
        self.down = down
        self.interrupt_at = interrupt_at
        self.committed: list[str] = []
        self.batches: list[list[str]] = []  # committed
        self.attempts: list[list[str]] = []  # every transaction tried
        self.in_transaction = 0
        self.overlapped = False
        self._lock = threading.Lock()

    def write(self, rows: Sequence[str]) -> None:
        with self._lock:
            self.in_transaction += 1
            self.overlapped |= self.in_transaction > 1
            self.attempts.append(list(rows))
            interrupted = len(self.attempts) - 1 == self.interrupt_at
        try:
            time.sleep(self.seconds)
            if interrupted:
                raise KeyboardInterrupt
            if self.down:
                raise ConnectionError("database unreachable")
            if self.refuse in rows:
                raise ValueError(f"row {self.refuse!r} breaks a constraint")
            with self._lock:
                self.committed.extend(rows)
                self.batches.append(list(rows))
        finally:
            with self._lock:
                self.in_transaction -= 1


def data_error(exc: Exception) -> bool:
    return isinstance(exc, ValueError)


def submit_all(commit: GroupCommit[str], table: SlowTable, rows: list[str]) -> dict[str, object]:
    """Each row from its own thread, at once (one first, so the rest queue behind it); per row:
    None, or what its caller got. Also checks that a caller returns only when its row is
    committed."""

    def one(row: str) -> object:
        try:
            commit.submit(row)
        except BaseException as exc:  # KeyboardInterrupt too: the test looks at what each got
            return exc
        assert row in table.committed, f"{row} returned before it was committed"
        return None

    with ThreadPoolExecutor(CALLERS) as pool:
        first = pool.submit(one, rows[0])
        time.sleep(table.seconds / 5)
        others = pool.map(one, rows[1:])  # all submitted now, while the first is writing
        outcomes = [first.result(), *others]
    return dict(zip(rows, outcomes, strict=True))


def test_concurrent_rows_share_transactions_and_each_is_committed_once() -> None:
    table = SlowTable()
    commit: GroupCommit[str] = GroupCommit(table.write)
    rows = [f"row-{n}" for n in range(CALLERS * 3)]
    outcomes = submit_all(commit, table, rows)
    assert all(outcome is None for outcome in outcomes.values())
    assert sorted(table.committed) == sorted(rows)  # every row once, none twice
    assert commit.transactions == len(table.batches) < len(rows) / 2
    assert max(len(batch) for batch in table.batches) > 1
    assert not table.overlapped  # one transaction at a time


def test_a_lone_caller_writes_at_once() -> None:
    table = SlowTable(seconds=0.0)
    commit: GroupCommit[str] = GroupCommit(table.write)
    commit.submit("alone")
    assert table.batches == [["alone"]]


def test_batches_never_exceed_the_bound() -> None:
    table = SlowTable()
    commit: GroupCommit[str] = GroupCommit(table.write, max_batch=3)
    rows = [f"row-{n}" for n in range(CALLERS * 2)]
    submit_all(commit, table, rows)
    assert sorted(table.committed) == sorted(rows)
    assert max(len(batch) for batch in table.batches) <= 3


def test_one_bad_row_fails_only_its_own_caller() -> None:
    table = SlowTable(refuse="row-7")
    commit: GroupCommit[str] = GroupCommit(table.write, data_error)
    rows = [f"row-{n}" for n in range(CALLERS * 2)]
    outcomes = submit_all(commit, table, rows)
    assert isinstance(outcomes["row-7"], ValueError)
    assert [row for row, outcome in outcomes.items() if outcome is not None] == ["row-7"]
    assert sorted(table.committed) == sorted(set(rows) - {"row-7"})
    failed_together = [batch for batch in table.attempts if "row-7" in batch]
    assert len(failed_together[0]) > 1 and failed_together[-1] == ["row-7"]  # then alone


def test_an_outage_fails_every_caller_of_the_batch_at_once_without_retrying_rows() -> None:
    table = SlowTable(down=True)
    commit: GroupCommit[str] = GroupCommit(table.write, data_error)
    rows = [f"row-{n}" for n in range(CALLERS)]
    started = time.monotonic()
    outcomes = submit_all(commit, table, rows)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes.values())
    assert sum(len(batch) for batch in table.attempts) == len(rows)  # each row tried once
    assert len(table.attempts) < len(rows)
    assert time.monotonic() - started < len(rows) * table.seconds


def test_an_interrupted_transaction_never_passes_for_committed() -> None:
    table = SlowTable(interrupt_at=1)  # the first row alone, then the others queued behind it
    commit: GroupCommit[str] = GroupCommit(table.write)
    rows = [f"row-{n}" for n in range(CALLERS)]
    outcomes = submit_all(commit, table, rows)
    interrupted = table.attempts[1]
    got = [type(outcomes[row]) for row in interrupted]
    assert len(interrupted) > 1
    assert got.count(KeyboardInterrupt) == 1  # the caller who led the transaction
    assert got.count(WriteInterrupted) == len(interrupted) - 1  # the callers waiting on it
    assert sorted(table.committed) == sorted(set(rows) - set(interrupted))
    assert all(outcomes[row] is None for row in table.committed)
    commit.submit("after")  # the writer is free again
    assert table.committed[-1] == "after"


def test_a_lone_bad_row_raises_to_its_caller() -> None:
    commit: GroupCommit[str] = GroupCommit(SlowTable(seconds=0.0, refuse="bad").write, data_error)
    with pytest.raises(ValueError, match="constraint"):
        commit.submit("bad")
    commit.submit("good")  # the writer is free again


def test_a_write_function_that_submits_to_its_own_writer_fails_instead_of_waiting() -> None:
    commit: GroupCommit[str] = GroupCommit(lambda rows: commit.submit("inner"))
    with pytest.raises(RuntimeError, match="its own write function"):
        commit.submit("outer")


def held_up(commit: GroupCommit[dict[str, object]]) -> list[int]:
    """Make each transaction of `commit` take 20 ms longer, so concurrent rows pile up; the
    sizes of the transactions tried, as they are."""
    write, sizes = commit._write, []

    def slowly(rows: Sequence[dict[str, object]]) -> None:
        sizes.append(len(rows))
        time.sleep(0.02)
        write(rows)

    commit._write = slowly
    return sizes


def concurrently(record: Callable[[str], None], ids: list[str]) -> list[str]:
    """Record each id from its own thread, at once; the ids whose record raised."""
    failed: list[str] = []

    def one(answer_id: str) -> None:
        try:
            record(answer_id)
        except Exception:
            failed.append(answer_id)

    with ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(one, ids))
    return failed


def acted_for(answer_id: str) -> ActedFor:
    return ActedFor(answer_id, datetime.now(UTC), "fingerprint", "answer", "c-1", "normal")


def test_the_credential_audit_keeps_every_concurrent_answer(tmp_path) -> None:
    audit = AnswerAudit(f"sqlite:///{tmp_path / 'ops.db'}")
    held_up(audit._writes)
    ids = [str(uuid.uuid4()) for _ in range(CALLERS * 4)]
    assert concurrently(lambda answer_id: audit.record(acted_for(answer_id)), ids) == []
    reopened = AnswerAudit(f"sqlite:///{tmp_path / 'ops.db'}")
    assert all(reopened.find(answer_id) is not None for answer_id in ids)
    assert audit._writes.transactions < len(ids)
    audit.close()
    reopened.close()


def test_a_duplicate_answer_id_fails_alone_and_the_rest_are_kept(tmp_path) -> None:
    audit = AnswerAudit(f"sqlite:///{tmp_path / 'ops.db'}")
    taken = str(uuid.uuid4())
    audit.record(acted_for(taken))
    sizes = held_up(audit._writes)
    ids = [str(uuid.uuid4()) for _ in range(CALLERS * 2)] + [taken]
    failed = concurrently(lambda answer_id: audit.record(acted_for(answer_id)), ids)
    assert failed == [taken]
    assert max(sizes) > 1 and sizes.count(1) > 0  # the duplicate's batch, then its rows alone
    assert audit._writes.transactions < len(ids)
    assert all(audit.find(answer_id) is not None for answer_id in ids)
    audit.close()


def logged(answer_id: str) -> LoggedAnswer:
    return LoggedAnswer(
        answer_id=answer_id,
        answered_at=datetime.now(UTC),
        question="How do I return an item?",
        question_hash="h",
        question_vector=np.array([0.5, -0.25]),
        customer_hash=None,
        mode="degraded",
        answer_chars=12,
        answer="Quoted text.",
        citations=[{"chunk_id": "c-1", "source": "policies", "page": 2}],
        model="m",
        prompt_version="answer-v1",
        embedding_model="e",
        best_relevance=0.7,
        latency_ms=12.5,
        timings_ms={"retrieve": 3.0},
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd=0.0,
        signals=[],
        reasons=["LLM unavailable"],
        escalation_id=None,
        llm_seconds=0.0,
    )


def test_the_answer_log_keeps_every_concurrent_answer_whole(tmp_path) -> None:
    answers = AnswerLog(f"sqlite:///{tmp_path / 'ops.db'}")
    held_up(answers._writes)
    ids = [str(uuid.uuid4()) for _ in range(CALLERS * 4)]
    assert concurrently(lambda answer_id: answers.record(logged(answer_id)), ids) == []
    for answer_id in ids:
        kept = answers.find(answer_id)
        assert kept is not None
        assert kept.timings_ms == {"retrieve": 3.0} and kept.reasons == ["LLM unavailable"]
        assert kept.citations == [{"chunk_id": "c-1", "source": "policies", "page": 2}]
        assert kept.question_vector is not None
        assert kept.question_vector.tolist() == pytest.approx([0.5, -0.25])
    assert answers._writes.transactions < len(ids)
    answers.close()
