"""Query embeddings of concurrent requests are computed together (serving/query_batching.py):
fewer model calls, each caller still gets the vectors of its own texts, errors reach every
waiting caller, and the real model gives the same vectors batched as alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from freshkb.serving.query_batching import BatchedEmbedder


class SlowCountingEmbedder:
    """A model stand-in for the batching logic: a vector that names its text, 20 ms a call."""

    model_id = "counting"
    dimension = 2
    max_tokens = 128

    def __init__(self, fail: bool = False):
        self.calls: list[list[str]] = []
        self.fail = fail

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """[length of the text, its first character's code point] per text."""
        self.calls.append(list(texts))
        time.sleep(0.02)
        if self.fail:
            raise RuntimeError("model broke")
        return [[float(len(text)), float(ord(text[0]))] for text in texts]


def ask_at_once(embedder: BatchedEmbedder, questions: list[list[str]]) -> list[list[list[float]]]:
    """Every caller's embed() released at the same moment; their results in order."""
    barrier = threading.Barrier(len(questions))

    def one(texts: list[str]) -> list[list[float]]:
        barrier.wait()
        return embedder.embed(texts)

    with ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(one, questions))


@pytest.mark.timeout(30)
def test_concurrent_queries_share_model_calls_and_keep_their_own_vectors() -> None:
    inner = SlowCountingEmbedder()
    batched = BatchedEmbedder(inner)
    questions = [[chr(65 + n) * (n + 1), chr(97 + n)] for n in range(16)]
    try:
        results = ask_at_once(batched, questions)
    finally:
        batched.close()
    for texts, vectors in zip(questions, results, strict=True):
        assert vectors == [[float(len(t)), float(ord(t[0]))] for t in texts]
    assert sum(len(call) for call in inner.calls) == 32  # every text embedded once
    assert len(inner.calls) <= 4, [len(call) for call in inner.calls]  # not 16 calls


@pytest.mark.timeout(30)
def test_a_text_embedded_lately_is_not_embedded_again() -> None:
    inner = SlowCountingEmbedder()
    batched = BatchedEmbedder(inner)
    try:
        first = batched.embed(["how do I return boots", "boots"])
        again = batched.embed(["boots", "how do I return boots"])
    finally:
        batched.close()
    assert again == first[::-1]
    assert inner.calls == [["how do I return boots", "boots"]]


@pytest.mark.timeout(30)
def test_a_model_error_reaches_every_waiting_caller() -> None:
    batched = BatchedEmbedder(SlowCountingEmbedder(fail=True))
    barrier = threading.Barrier(8)

    def one(n: int) -> str:
        barrier.wait()
        try:
            batched.embed([f"question {n}"])
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(one, range(8)))
    finally:
        batched.close()
    assert outcomes == ["model broke"] * 8


@pytest.mark.timeout(30)
def test_a_closed_batcher_still_embeds() -> None:
    inner = SlowCountingEmbedder()
    batched = BatchedEmbedder(inner)
    batched.close()
    assert batched.embed(["after close"]) == [[11.0, 97.0]]


@pytest.mark.timeout(300)
def test_real_model_vectors_batched_equal_vectors_alone() -> None:
    from freshkb.embeddings.embedder import get_embedder

    model = get_embedder("all-MiniLM-L6-v2", "cpu")
    questions = [[f"Can I return item number {n} after {n + 3} days?"] for n in range(12)]
    alone = [model.embed(texts)[0] for texts in questions]
    batched = BatchedEmbedder(model)
    try:
        together = [vectors[0] for vectors in ask_at_once(batched, questions)]
    finally:
        batched.close()
    assert batched.batches < len(questions)
    np.testing.assert_allclose(np.array(together), np.array(alone), atol=1e-5)
