"""Builds the real answer service from settings: store, models, guard, ledger and LLM."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from weaviate.exceptions import WeaviateBaseError

from freshkb.core.config import Settings
from freshkb.core.errors import FreshkbError
from freshkb.core.records import SourceKind
from freshkb.embeddings.embedder import (
    BUNDLED_MODEL_ID,
    Embedder,
    base_model_id,
    select_embedder,
    settings_for_index,
)
from freshkb.screening import InjectionGuard, load_guard
from freshkb.screening.guard import detector_embedder
from freshkb.screening.verdict_cache import open_verdict_cache
from freshkb.serving.answer_log import AnswerJournal, AnswerLog, hash_key
from freshkb.serving.answerer import OpenAICompatibleAnswerer
from freshkb.serving.escalations import EscalationStore
from freshkb.serving.query_batching import BatchedEmbedder
from freshkb.serving.service import AnswerService
from freshkb.store.ledger import Ledger
from freshkb.store.weaviate_store import WeaviateStore

log = logging.getLogger(__name__)
QUERY_EMBED_THREADS = 1


@dataclass
class Runtime:
    """The answer service and what it holds open."""

    service: AnswerService
    answerer: OpenAICompatibleAnswerer
    batchers: list[BatchedEmbedder] = field(default_factory=list)

    def ready(self) -> dict[str, Any]:
        """Readiness of each dependency; ready when Weaviate and the ledger answer."""
        checks: dict[str, Any] = {"weaviate": self.service.store.is_ready()}
        try:
            checks["ledger"] = len(self.service.ledger.states()) >= 0
        except Exception as exc:
            checks["ledger"] = f"down: {exc}"
        try:
            response = httpx.get(f"{self.answerer.base_url}/models", timeout=2.0)
            checks["llm"] = response.status_code == 200
        except httpx.HTTPError as exc:
            checks["llm"] = f"down: {exc} (answers fall back to quoting)"
        checks["llm_circuit_open"] = self.answerer.breaker.is_open
        checks["ready"] = checks["weaviate"] is True and checks["ledger"] is True
        return checks

    def close(self) -> None:
        """Release connections."""
        self.answerer.close()
        for batcher in self.batchers:
            batcher.close()
        self.service.store.close()
        self.service.ledger.close()
        self.service.escalations.close()
        if self.service.verdicts is not None:
            self.service.verdicts.close()
        if self.service.journal is not None:
            self.service.journal.close()


def build_runtime(settings: Settings, step: Callable[[str], None] | None = None) -> Runtime:
    """The answer service wired to the configured Weaviate, model, database and LLM, logging
    every answer in the operational database; `step` hears each part as it is built. A part
    that fails closes the parts built before it."""
    step = step or (lambda name: None)
    with contextlib.ExitStack() as opened:
        step("connecting to Weaviate")
        store = WeaviateStore.connected(settings)
        opened.callback(store.close)
        # Questions are embedded as the index's vectors were made (int8 or fp32), whatever the
        # machine: embeddings/embedder.py backend_for_index.
        settings = settings_for_index(settings, index_model(store))
        step("loading the embedding model")
        # One ONNX thread per call: a question is a few tokens, and a second thread cost ~40%
        # more CPU per question (5.2 -> 7.3-8.2 ms) for the same latency alone; under load the
        # cores are busy with other requests and Weaviate anyway.
        embedder = BatchedEmbedder(
            select_embedder(
                settings.embedding_model,
                settings.embedding_device,
                settings.embedding_batch_size,
                settings.embedding_backend,
                settings.cache_dir,
                threads=QUERY_EMBED_THREADS,
            )
        )
        opened.callback(embedder.close)
        detector = _detector_batcher(embedder, settings)
        if detector is not embedder:
            opened.callback(detector.close)
        step("loading the injection screen")
        # The detector is always the bundled model, whatever model the index uses, so the
        # shipped parameters apply; fitted once per cache otherwise.
        guard = load_guard(detector, cache_dir=settings.cache_dir, use_shipped=True)
        step("connecting to the LLM and the databases")
        service, answerer = _service(settings, store, embedder, guard, opened)
        opened.pop_all()
    batchers = [embedder] if detector is embedder else [embedder, detector]
    return Runtime(service=service, answerer=answerer, batchers=batchers)


def _service(
    settings: Settings,
    store: WeaviateStore,
    embedder: BatchedEmbedder,
    guard: InjectionGuard,
    opened: contextlib.ExitStack,
) -> tuple[AnswerService, OpenAICompatibleAnswerer]:
    """The answer service over the parts built so far, with its LLM client and databases;
    each is registered in `opened`, to be closed if a later one fails."""
    answerer = OpenAICompatibleAnswerer(settings)
    opened.callback(answerer.close)
    ledger = Ledger(settings.ledger_database_url)
    opened.callback(ledger.close)
    escalations = EscalationStore(settings.ledger_database_url)
    opened.callback(escalations.close)
    journal = AnswerJournal(
        AnswerLog(settings.ledger_database_url, settings.answer_log_retention_days),
        settings.answer_log_questions,
        key=hash_key(
            settings.answer_log_hash_key.get_secret_value()
            if settings.answer_log_hash_key
            else None,
            settings.data_dir,
        ),
    )
    opened.callback(journal.close)
    service = AnswerService(
        settings=settings,
        store=store,
        embedder=embedder,
        ledger=ledger,
        escalations=escalations,
        answerer=answerer,
        guard=guard,
        journal=journal,
    )
    service.verdicts = open_verdict_cache(settings)
    return service, answerer


def index_model(store: WeaviateStore) -> str | None:
    """The model id of the live index's vectors (the policies', else the customer records');
    None before the first ingest, or when Weaviate cannot say (the service starts anyway, as
    it does with Weaviate down)."""
    try:
        return store.vectors_model(SourceKind.DOCUMENTS)
    except (FreshkbError, WeaviateBaseError) as exc:
        log.warning("the index's embedding model is unknown (%s): embedding as for a new one", exc)
        return None


def _detector_batcher(embedder: BatchedEmbedder, settings: Settings) -> BatchedEmbedder:
    """The screen's embedder: the index's own when that is the bundled model on the CPU (one
    model loaded, and a question embedded for the screen is not embedded again to search),
    else its own. Its int8 vectors too: the shipped parameters fed int8 vectors block as many
    unseen attacks and flag as few benign questions (bench/results/int8-question-detector-*)."""
    inner: Embedder = embedder.inner
    bundled = base_model_id(inner.model_id) == BUNDLED_MODEL_ID
    if bundled and getattr(inner, "device", "cpu") == "cpu":
        return embedder
    return BatchedEmbedder(detector_embedder(settings.cache_dir))
