"""Group commit (core/group_commit.py): concurrent rows share transactions, each caller returns
once its own row is committed, and one bad row fails only its own caller. Also the answer log
and the credential audit writing through it to a real SQLite file."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pytest

from freshkb.core.group_commit import GroupCommit
from freshkb.serving.answer_log import AnswerLog, LoggedAnswer
from freshkb.serving.audit import ActedFor, AnswerAudit

CALLERS = 16


class SlowTable:
    """A table whose transactions take a while, so callers pile up behind one."""

    def __init__(self, seconds: float = 0.05, refuse: str | None = None):
        self.seconds = seconds
        self.refuse = refuse
        self.committed: list[str] = []
        self.batches: list[list[str]] = []
        self.in_transaction = 0
        self.overlapped = False
        self._lock = threading.Lock()

    def write(self, rows: Sequence[str]) -> None:
        with self._lock:
            self.in_transaction += 1
            self.overlapped |= self.in_transaction > 1
        try:
            time.sleep(self.seconds)
            if self.refuse in rows:
                raise ValueError(f"row {self.refuse!r} breaks a constraint")
            with self._lock:
                self.committed.extend(rows)
                self.batches.append(list(rows))
        finally:
            with self._lock:
                self.in_transaction -= 1


def submit_all(commit: GroupCommit[str], table: SlowTable, rows: list[str]) -> dict[str, object]:
    """Each row from its own thread, at once; per row: None, or the error its caller got.
    Also checks that a caller returns only when its row is committed."""

    def one(row: str) -> object:
        try:
            commit.submit(row)
        except ValueError as exc:
            return exc
        assert row in table.committed, f"{row} returned before it was committed"
        return None

    with ThreadPoolExecutor(CALLERS) as pool:
        return dict(zip(rows, pool.map(one, rows), strict=True))


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
    commit: GroupCommit[str] = GroupCommit(table.write)
    rows = [f"row-{n}" for n in range(CALLERS * 2)]
    outcomes = submit_all(commit, table, rows)
    assert isinstance(outcomes["row-7"], ValueError)
    assert [row for row, outcome in outcomes.items() if outcome is not None] == ["row-7"]
    assert sorted(table.committed) == sorted(set(rows) - {"row-7"})


def test_a_lone_bad_row_raises_to_its_caller() -> None:
    commit: GroupCommit[str] = GroupCommit(SlowTable(seconds=0.0, refuse="bad").write)
    with pytest.raises(ValueError, match="constraint"):
        commit.submit("bad")
    commit.submit("good")  # the writer is free again


def held_up(commit: GroupCommit[dict[str, object]]) -> None:
    """Make each transaction of `commit` take 20 ms longer, so concurrent rows pile up."""
    write = commit._write

    def slowly(rows: Sequence[dict[str, object]]) -> None:
        time.sleep(0.02)
        write(rows)

    commit._write = slowly


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
    held_up(audit._writes)
    ids = [str(uuid.uuid4()) for _ in range(CALLERS * 2)] + [taken]
    failed = concurrently(lambda answer_id: audit.record(acted_for(answer_id)), ids)
    assert failed == [taken]
    assert audit._writes.transactions < len(ids)  # the duplicate shared a batch, then failed alone
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
