"""The answer service's per-answer writes (answer log row + credential audit row) under
concurrent callers: one transaction per row (before) against group commit (core/group_commit.py).

    .venv/bin/python bench/log_writes.py [--threads 16] [--answers 2000] [--rounds 3] [--json]

Each round writes `answers` answers from `threads` threads into a new SQLite operational
database, first one way then the other (alternating, so drift in the machine hits both), and
reports answers per second and the process CPU time per answer, the medians over rounds, with
the ratio. The rows are real LoggedAnswer and ActedFor rows as the service builds them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from freshkb.serving.answer_log import AnswerLog, LoggedAnswer, _to_row, answer_log_table  # noqa: E402
from freshkb.serving.audit import ActedFor, AnswerAudit, answer_credentials  # noqa: E402


def logged(answer_id: str) -> LoggedAnswer:
    """A row the size of a quoted answer's."""
    return LoggedAnswer(
        answer_id=answer_id,
        answered_at=datetime.now(UTC),
        question="How long does a refund take once the item is back?",
        question_hash="0" * 64,
        question_vector=np.zeros(384, dtype=np.float32),
        customer_hash=None,
        mode="degraded",
        answer_chars=600,
        answer="x" * 600,
        citations=[
            {"chunk_id": str(uuid.uuid4()), "source": "policies", "page": n} for n in range(3)
        ],
        model="SmolLM2-135M-Instruct",
        prompt_version="answer-v1",
        embedding_model="all-MiniLM-L6-v2",
        best_relevance=0.61,
        latency_ms=180.0,
        timings_ms={"safety": 4.0, "retrieve": 9.0, "screen": 0.3},
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd=0.0,
        signals=[],
        reasons=["LLM unavailable, answered by quoting"],
    )


def one_transaction_each(answers: AnswerLog, audit: AnswerAudit) -> Callable[[str], None]:
    """The writes as they were before group commit: a transaction per row."""

    def write(answer_id: str) -> None:
        with answers.engine.begin() as connection:
            connection.execute(sa.insert(answer_log_table).values(**_to_row(logged(answer_id))))
        entry = ActedFor(answer_id, datetime.now(UTC), "f" * 16, "answer", None, "degraded")
        with audit.engine.begin() as connection:
            connection.execute(sa.insert(answer_credentials).values(**entry.__dict__))

    return write


def group_committed(answers: AnswerLog, audit: AnswerAudit) -> Callable[[str], None]:
    """The writes as the service makes them now."""

    def write(answer_id: str) -> None:
        answers.record(logged(answer_id))
        audit.record(ActedFor(answer_id, datetime.now(UTC), "f" * 16, "answer", None, "degraded"))

    return write


def run(way: str, threads: int, count: int) -> dict[str, float]:
    """Write `count` answers from `threads` threads one way; answers/s and CPU ms per answer."""
    with tempfile.TemporaryDirectory(prefix="freshkb-log-writes-") as folder:
        url = f"sqlite:///{Path(folder) / 'ops.db'}"
        answers, audit = AnswerLog(url), AnswerAudit(url)
        write = (one_transaction_each if way == "before" else group_committed)(answers, audit)
        ids = [str(uuid.uuid4()) for _ in range(count)]
        wall, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write, ids))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with answers.engine.connect() as connection:
            for table in (answer_log_table, answer_credentials):
                kept = connection.execute(sa.select(sa.func.count()).select_from(table))
                assert kept.scalar_one() == count, f"rows of {table.name} went missing"
        answers.close()
        audit.close()
    return {"answers_per_s": count / wall, "cpu_ms_per_answer": 1000 * cpu / count}


def main() -> int:
    """Measure and print the table (or --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {"before": [], "group commit": []}
    for number in range(args.rounds):
        ways = list(rounds) if number % 2 == 0 else list(rounds)[::-1]  # alternate which goes first
        for way in ways:
            rounds[way].append(run(way, args.threads, args.answers))
    medians = {
        way: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for way, runs in rounds.items()
    }
    before, after = medians["before"], medians["group commit"]
    result = {
        "threads": args.threads,
        "answers": args.answers,
        "rounds": rounds,
        "medians": medians,
        "speed_ratio": after["answers_per_s"] / before["answers_per_s"],
        "cpu_ratio": after["cpu_ms_per_answer"] / before["cpu_ms_per_answer"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.answers} answers from {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'writes':<16}{'answers/s':>12}{'CPU ms/answer':>16}")
    for way, figures in medians.items():
        print(f"{way:<16}{figures['answers_per_s']:>12.0f}{figures['cpu_ms_per_answer']:>16.2f}")
    print(
        f"group commit / before: {result['speed_ratio']:.2f}x the answers/s, "
        f"{result['cpu_ratio']:.2f}x the CPU per answer"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
