"""Query embeddings for concurrent requests, computed together.

Each request embeds a few short texts (the question for retrieval, its pieces for the injection
screen). One at a time, a CPU spends most of such a call on per-call overhead, and concurrent
calls fight over the same cores. `BatchedEmbedder` hands every call to one thread that embeds
whatever has queued up meanwhile in a single call to the model: under load the batches grow by
themselves, and a lone request waits for nothing. The latest vectors are kept (`RECENT`): a
question screened for injection is embedded again for retrieval moments later, and asked again
by others.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from freshkb.embeddings.embedder import Embedder

# Beyond this many texts a call is already a batch (fitting, a bulk job): embedded directly.
MAX_BATCH = 64
RECENT = 2048  # texts whose vectors are kept: ~3 MB at 384 dimensions


@dataclass
class _Request:
    """Texts waiting to be embedded, and where their vectors (or the error) go."""

    texts: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    vectors: list[list[float]] = field(default_factory=list)
    error: BaseException | None = None


class BatchedEmbedder:
    """An Embedder that embeds the texts of concurrent callers in one model call."""

    def __init__(self, inner: Embedder, max_batch: int = MAX_BATCH):
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.max_tokens = inner.max_tokens
        self.max_batch = max_batch
        self.batches = 0  # model calls made, for tests and metrics
        self._recent: OrderedDict[str, list[float]] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._queue: list[_Request] = []
        self._ready = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="query-embedder", daemon=True)
        self._worker.start()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, embedded together with other callers' texts."""
        if not texts:
            return []
        if len(texts) >= self.max_batch or self._closed:
            return self.inner.embed(texts)
        known = self._known(texts)
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        if missing:
            known.update(zip(missing, self._embed_queued(missing), strict=True))
        return [known[text] for text in texts]

    def _known(self, texts: Sequence[str]) -> dict[str, list[float]]:
        """The vectors of `texts` embedded lately."""
        with self._recent_lock:
            found = {text: self._recent[text] for text in texts if text in self._recent}
            for text in found:
                self._recent.move_to_end(text)
        return found

    def _embed_queued(self, texts: list[str]) -> list[list[float]]:
        """Queue the texts for the worker and wait for their vectors."""
        request = _Request(texts)
        with self._ready:
            self._queue.append(request)
            self._ready.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.vectors

    def close(self) -> None:
        """Stop the worker once the queue is empty; later calls embed directly."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._worker.join(timeout=10)

    def _take(self) -> list[_Request] | None:
        """The queued requests, up to about `max_batch` texts; None once closed and empty."""
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if not self._queue:
                return None
            taken: list[_Request] = []
            size = 0
            while self._queue and (not taken or size + len(self._queue[0].texts) <= self.max_batch):
                request = self._queue.pop(0)
                taken.append(request)
                size += len(request.texts)
            return taken

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            self._embed_together(taken)

    def _embed_together(self, taken: list[_Request]) -> None:
        """Embed each distinct text once (a question is often screened and searched alike)."""
        distinct = list(dict.fromkeys(text for request in taken for text in request.texts))
        try:
            vectors = dict(zip(distinct, self.inner.embed(distinct), strict=True))
            self.batches += 1
        except BaseException as exc:  # every waiting caller gets the error, none hangs
            for request in taken:
                request.error = exc
                request.done.set()
            return
        with self._recent_lock:
            self._recent.update(vectors)
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        for request in taken:
            request.vectors = [vectors[text] for text in request.texts]
            request.done.set()
