"""Builds the real answer service from settings: store, models, guard, ledger and LLM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from freshkb.core.config import Settings
from freshkb.embeddings.embedder import get_embedder
from freshkb.screening import load_guard
from freshkb.serving.answer_log import AnswerJournal, AnswerLog, hash_key
from freshkb.serving.answerer import OpenAICompatibleAnswerer
from freshkb.serving.escalations import EscalationStore
from freshkb.serving.service import AnswerService
from freshkb.store.ledger import Ledger
from freshkb.store.weaviate_store import WeaviateStore, connect


@dataclass
class Runtime:
    """The answer service and what it holds open."""

    service: AnswerService
    answerer: OpenAICompatibleAnswerer

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
        self.service.store.close()
        self.service.ledger.close()
        self.service.escalations.close()
        if self.service.journal is not None:
            self.service.journal.close()


def build_runtime(settings: Settings) -> Runtime:
    """The answer service wired to the configured Weaviate, model, database and LLM, logging
    every answer in the operational database."""
    embedder = get_embedder(
        settings.embedding_model, settings.embedding_device, settings.embedding_batch_size
    )
    answerer = OpenAICompatibleAnswerer(settings)
    service = AnswerService(
        settings=settings,
        store=WeaviateStore(connect(settings)),
        embedder=embedder,
        ledger=Ledger(settings.ledger_database_url),
        escalations=EscalationStore(settings.ledger_database_url),
        answerer=answerer,
        # The detector's own bundled model, whatever model the index uses; fitted once per cache.
        guard=load_guard(cache_dir=settings.cache_dir),
        journal=AnswerJournal(
            AnswerLog(settings.ledger_database_url, settings.answer_log_retention_days),
            settings.answer_log_questions,
            key=hash_key(
                settings.answer_log_hash_key.get_secret_value()
                if settings.answer_log_hash_key
                else None,
                settings.data_dir,
            ),
        ),
    )
    return Runtime(service=service, answerer=answerer)
