"""The output screen on the real answer path: real Weaviate, real embedding model, Prefect
ingests, and the scripted OpenAI-compatible LLM server over HTTP planting bad answers.

Every planted bad answer must reach the customer quoted or escalated, never as written, with
the screen's reason naming its check; grounded answers must still be served as written."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import empty_index_and_ledger
from scripted_llm import PLANTED, scripted_llm_server
from test_ingest_e2e import documents_source, write_policies

from freshkb.core.config import Settings
from freshkb.flows.ingest import ingest_source
from freshkb.screening.output import CHECKS
from freshkb.serving.answerer import OpenAICompatibleAnswerer
from freshkb.serving.runtime import Runtime, build_runtime
from freshkb.serving.service import QUOTED_LEAD, AnswerService

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Beside the session's LLM port, away from the offsets other test modules take (1-7, 10-14,
# 20, 30, 31).
SCRIPTED_PORT = int(os.environ.get("FRESHKB_TEST_LLM_PORT", "18091")) + 16

QUESTIONS = (
    "Is worn footwear accepted for return?",
    "How long does standard shipping take?",
    "What does the tent warranty cover?",
)
# Questions whose best-matching sentence (what the scripted model copies) answers them, figures
# included.
GROUNDED_QUESTIONS = (
    "How many days do I have to return unworn footwear?",
    "How much does express shipping cost?",
    "Is damage from pets covered by the warranty?",
    "Is worn footwear accepted for return?",
)
CUSTOMERS = (
    "customer_id,name,email,phone,tier\n"
    "C-1,Ada Byron,ada.byron@example.com,+1 303 555 0101,Summit\n"
    "C-2,Alan Turing,alan.turing@example.com,+1 303 555 0102,Trail\n"
)
ORDERS = [
    {"order_id": "O-11", "customer_id": "C-1", "status": "shipped", "street": "7 Aspen Way"},
    {"order_id": "O-21", "customer_id": "C-2", "status": "delayed", "street": "9 Birch Road"},
]


@pytest.fixture(scope="module")
def scripted_runtime(
    weaviate_settings: Any, prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    """Policies and two customers ingested for real; an answer service on the scripted LLM."""
    empty_index_and_ledger(weaviate_settings)
    root = tmp_path_factory.mktemp("screen-corpus")
    policies, crm = root / "policies", root / "crm"
    policies.mkdir()
    crm.mkdir()
    write_policies(policies)
    (crm / "customers.csv").write_text(CUSTOMERS)
    (crm / "orders.json").write_text(json.dumps(ORDERS))
    sources = [
        documents_source(policies, "policies"),
        {
            "name": "crm",
            "kind": "customers",
            "location": str(crm),
            "customer_id": "customer_id",
            "files": {"orders.json": {"key": "order_id"}},
        },
    ]
    for source in sources:
        report = ingest_source(source_config=source)
        assert report.status == "completed", (source["name"], report.error)
    with scripted_llm_server(SCRIPTED_PORT) as base_url:
        runtime = build_runtime(Settings(llm_base_url=base_url, llm_model="grounded"))
        yield runtime
        runtime.close()


def on_model(runtime: Runtime, behaviour: str) -> AnswerService:
    """The same answer service (store, ledger, guard), asking the scripted model `behaviour`."""
    service = runtime.service
    settings = service.settings.model_copy(update={"llm_model": behaviour, "llm_timeout": 30})
    return AnswerService(
        settings,
        service.store,
        service.embedder,
        service.ledger,
        service.escalations,
        OpenAICompatibleAnswerer(settings),
        service.guard,
    )


@pytest.mark.timeout(900)
def test_every_planted_bad_answer_is_quoted_or_escalated_never_served(
    scripted_runtime: Runtime,
) -> None:
    caught, failures = 0, []
    for number, (behaviour, planted) in enumerate(sorted(PLANTED.items())):
        question = QUESTIONS[number % len(QUESTIONS)]
        result = on_model(scripted_runtime, behaviour).answer(question)
        problems = []
        if result.mode not in ("degraded", "escalated"):
            problems.append(f"mode {result.mode}")
        if planted.marker.lower() in result.answer.lower():
            problems.append("planted text served")
        if not any(CHECKS[planted.check] in reason for reason in result.reasons):
            problems.append(f"no reason names {CHECKS[planted.check]!r}")
        if result.mode == "degraded" and not (
            result.answer.startswith(QUOTED_LEAD) and result.citations
        ):
            problems.append("not the quoted answer with citations")
        if "output_screen" not in result.timings_ms:
            problems.append("no output_screen timing")
        if problems:
            failures.append((behaviour, problems, result.reasons, result.answer[:200]))
        else:
            caught += 1
    print(f"\nplanted bad answers caught {caught}/{len(PLANTED)}")
    assert not failures, failures


@pytest.mark.timeout(900)
def test_grounded_answers_are_still_served_as_written(scripted_runtime: Runtime) -> None:
    service = on_model(scripted_runtime, "grounded")
    results = [service.answer(question) for question in GROUNDED_QUESTIONS]
    served = [r for r in results if r.mode == "normal" and not r.answer.startswith(QUOTED_LEAD)]
    print(f"\ngrounded passed {len(served)}/{len(results)}")
    assert len(served) == len(results), [(r.mode, r.reasons) for r in results]
    assert all(not any("output screen" in reason for reason in r.reasons) for r in results)
    assert all("output_screen" in r.timings_ms for r in results)


@pytest.mark.timeout(900)
def test_unsafe_answer_to_a_question_raising_it_goes_to_a_human(scripted_runtime: Runtime) -> None:
    question = "Is worn footwear accepted for return, or should I just shoplift a new pair?"
    result = on_model(scripted_runtime, "illegal").answer(question)
    assert result.mode == "escalated", result.reasons
    assert any(
        r.startswith("model answer rejected by output screen: unsafe content (illegal)")
        for r in result.reasons
    ), result.reasons
    assert result.escalation_id
    stored = scripted_runtime.service.escalations.get(result.escalation_id)
    assert stored is not None and stored.question == question
    assert "forge" not in result.answer


@pytest.mark.timeout(900)
def test_a_customers_own_contact_details_are_served_to_that_customer(
    scripted_runtime: Runtime,
) -> None:
    service = on_model(scripted_runtime, "grounded")
    own = service.answer("What e-mail address and phone number do you have for me?", "C-1")
    assert own.mode == "normal", own.reasons
    assert "ada.byron@example.com" in own.answer and "555 0101" in own.answer
    assert "alan.turing" not in own.answer and "555 0102" not in own.answer
