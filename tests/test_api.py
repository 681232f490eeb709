"""The HTTP API's contract: every route documents its response in OpenAPI, and what the routes
send over a real answer service (real Weaviate, real model, a Prefect ingest, the scripted
OpenAI-compatible LLM) is exactly what that documentation describes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import TEST_LLM_PORT, empty_index_and_ledger
from fastapi.testclient import TestClient
from pydantic import BaseModel
from scripted_llm import scripted_llm_server
from test_ingest_e2e import documents_source, write_policies

from freshkb.api import create_app
from freshkb.api.schemas import (
    AnswerResponse,
    EscalationRecord,
    FeedbackReceipt,
    HealthStatus,
    LoggedAnswerRecord,
    Readiness,
    SearchResponse,
    SourceStatus,
)
from freshkb.api.tokens import local_tokens
from freshkb.core.config import Settings
from freshkb.flows.ingest import ingest_source
from freshkb.serving.runtime import Runtime, build_runtime

ANSWER_TOKEN = "api-test-answer"
ADMIN_TOKEN = "api-test-admin"
# Away from the session's real LLM server on TEST_LLM_PORT and test_answer_e2e's scripted one.
SCRIPTED_PORT = TEST_LLM_PORT + 3


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document of an app; building it never calls the answer service."""
    app = create_app(Settings(), service=None)  # type: ignore[arg-type]
    return TestClient(app).get("/openapi.json").json()


def test_every_route_documents_its_success_response_schema() -> None:
    spec = openapi_spec()
    undocumented = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            success = [code for code in operation["responses"] if code.startswith("2")]
            assert success, f"{method} {path} declares no success response"
            for code in success:
                schema = operation["responses"][code]["content"]["application/json"]["schema"]
                described = schema["items"] if schema.get("type") == "array" else schema
                if "$ref" not in described and "properties" not in described:
                    undocumented.append(f"{method.upper()} {path} {code}")
    assert not undocumented, f"responses without a schema: {undocumented}"
    assert set(spec["paths"]) == {
        "/healthz",
        "/readyz",
        "/v1/answer",
        "/v1/search",
        "/v1/sources",
        "/v1/feedback",
        "/v1/answers/{answer_id}",
        "/v1/review",
        "/v1/review/{answer_id}",
        "/v1/escalations",
        "/v1/escalations/{escalation_id}/resolve",
        "/v1/uploads",
        "/v1/sources/{name}/documents",
        "/v1/sources/{name}/documents/{document}",
    }


def test_local_tokens_are_made_once_owner_only_and_reused(tmp_path: Path) -> None:
    path, tokens = local_tokens(tmp_path / "data")
    assert sorted(tokens.values()) == ["admin", "answer", "upload"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert local_tokens(tmp_path / "data") == (path, tokens)


# -- over a real answer service -----------------------------------------------------------------


def assert_documented(
    spec: dict[str, Any], method: str, path: str, response: Any, model: type[BaseModel]
) -> None:
    """The body validates against the route's OpenAPI schema and reads back unchanged through
    its model (no field dropped, added or re-formatted)."""
    operation = spec["paths"][path][method]
    schema = operation["responses"][str(response.status_code)]["content"]["application/json"]
    # The route's schema, resolved against the document's own components.
    jsonschema.validate(response.json(), {**schema["schema"], "components": spec["components"]})
    body = response.json()
    items = body if isinstance(body, list) else [body]
    for item in items:
        assert model.model_validate(item).model_dump(mode="json", exclude_unset=True) == item


@pytest.fixture(scope="module")
def answer_services(
    weaviate_settings: Any, prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Runtime]]:
    """Answer services over a freshly ingested corpus: one whose model answers from the
    passages, one whose model finds them insufficient (so questions escalate)."""
    empty_index_and_ledger(weaviate_settings)
    policies = tmp_path_factory.mktemp("api-policies")
    write_policies(policies)
    report = ingest_source(source_config=documents_source(policies, "api-kb"))
    assert report.completed, report.error
    tokens = {ANSWER_TOKEN: "answer", ADMIN_TOKEN: "admin"}
    with scripted_llm_server(SCRIPTED_PORT) as base_url:
        built = {
            behaviour: build_runtime(
                Settings(llm_base_url=base_url, llm_model=behaviour, api_tokens=tokens)
            )
            for behaviour in ("grounded", "insufficient")
        }
        yield built
        for runtime in built.values():
            runtime.close()


def client_for(runtime: Runtime) -> TestClient:
    """An HTTP client of the API over one answer service."""
    return TestClient(create_app(runtime.service.settings, runtime.service, runtime.ready))


def auth(token: str) -> dict[str, str]:
    """Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.integration
@pytest.mark.slow
def test_every_response_matches_its_documented_schema(answer_services: dict[str, Runtime]) -> None:
    spec = openapi_spec()
    api = client_for(answer_services["grounded"])
    escalating = client_for(answer_services["insufficient"])

    assert_documented(spec, "get", "/healthz", api.get("/healthz"), HealthStatus)
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert_documented(spec, "get", "/readyz", ready, Readiness)

    question = {"question": "How many days do I have to return unworn footwear?"}
    answered = api.post("/v1/answer", json=question, headers=auth(ANSWER_TOKEN))
    assert answered.status_code == 200 and answered.json()["mode"] == "normal"
    assert answered.json()["citations"], "a normal answer cites its passages"
    assert_documented(spec, "post", "/v1/answer", answered, AnswerResponse)

    found = api.get(
        "/v1/search", params={"q": "free shipping threshold"}, headers=auth(ANSWER_TOKEN)
    )
    assert found.status_code == 200 and found.json()["hits"]
    assert_documented(spec, "get", "/v1/search", found, SearchResponse)

    listed = api.get("/v1/sources", headers=auth(ANSWER_TOKEN))
    assert [s["name"] for s in listed.json()] == ["api-kb"]
    assert_documented(spec, "get", "/v1/sources", listed, SourceStatus)

    feedback = {"answer_id": answered.json()["answer_id"], "helpful": True}
    stored = api.post("/v1/feedback", json=feedback, headers=auth(ANSWER_TOKEN))
    assert stored.status_code == 201
    assert_documented(spec, "post", "/v1/feedback", stored, FeedbackReceipt)
    logged = api.get(f"/v1/answers/{answered.json()['answer_id']}", headers=auth(ADMIN_TOKEN))
    assert logged.status_code == 200 and logged.json()["feedback"]
    assert_documented(spec, "get", "/v1/answers/{answer_id}", logged, LoggedAnswerRecord)

    escalated = escalating.post("/v1/answer", json=question, headers=auth(ANSWER_TOKEN))
    assert escalated.json()["mode"] == "escalated", escalated.json()["reasons"]
    assert_documented(spec, "post", "/v1/answer", escalated, AnswerResponse)
    open_items = api.get("/v1/escalations", params={"status": "open"}, headers=auth(ADMIN_TOKEN))
    assert escalated.json()["escalation_id"] in {item["id"] for item in open_items.json()}
    assert_documented(spec, "get", "/v1/escalations", open_items, EscalationRecord)

    resolved = api.post(
        f"/v1/escalations/{escalated.json()['escalation_id']}/resolve",
        json={"answer": "Within 60 days, unworn.", "resolved_by": "sam"},
        headers=auth(ADMIN_TOKEN),
    )
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
    assert_documented(
        spec, "post", "/v1/escalations/{escalation_id}/resolve", resolved, EscalationRecord
    )


@pytest.mark.integration
@pytest.mark.slow
def test_routes_send_what_the_service_returns(answer_services: dict[str, Runtime]) -> None:
    runtime = answer_services["grounded"]
    api = client_for(runtime)
    listed = api.get("/v1/sources", headers=auth(ANSWER_TOKEN)).json()
    expected = [state.to_dict() for state in runtime.service.ledger.states()]
    clock = {"checked_at": None, "age_seconds": None, "age": None}  # read a moment apart
    for sent, state in zip(listed, expected, strict=True):
        assert {**sent, **clock} == {**state, **clock}
        if state["age_seconds"] is not None:
            assert abs(sent["age_seconds"] - state["age_seconds"]) < 5
    items = api.get("/v1/escalations", headers=auth(ADMIN_TOKEN)).json()
    assert items == [item.to_dict() for item in runtime.service.escalations.find(None)]


def test_token_scopes_are_answer_admin_or_one_customer() -> None:
    import pydantic

    from freshkb.core.config import Settings

    assert Settings(api_tokens={"t": "customer:C-1"}).api_tokens == {"t": "customer:C-1"}
    with pytest.raises(pydantic.ValidationError, match="customer:<customer id>"):
        Settings(api_tokens={"t": "root"})


def test_a_customer_credential_acts_only_for_its_customer() -> None:
    from fastapi import HTTPException

    from freshkb.api.auth import credential_for

    tokens = {"svc": "answer", "c1": "customer:C-1", "adm": "admin"}
    customer = credential_for(tokens, "c1")
    assert customer is not None and customer.scope == "customer"
    assert customer.acting_for(None) == customer.acting_for("C-1") == "C-1"
    with pytest.raises(HTTPException) as refused:
        customer.acting_for("C-2")
    assert refused.value.status_code == 403
    service = credential_for(tokens, "svc")
    assert service is not None and service.acting_for("C-2") == "C-2"
    assert service.acting_for(None) is None
    assert credential_for(tokens, "nope") is None
    assert "c1" not in customer.fingerprint and len(customer.fingerprint) == 16


@pytest.mark.integration
def test_a_service_that_fails_to_start_closes_what_it_had_opened(
    weaviate_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freshkb.core.errors import ConfigError
    from freshkb.serving import runtime as runtime_module
    from freshkb.serving.query_batching import BatchedEmbedder
    from freshkb.store.weaviate_store import WeaviateStore

    closed: list[Any] = []
    for part in (WeaviateStore, BatchedEmbedder):
        monkeypatch.setattr(
            part, "close", lambda self, close=part.close: (closed.append(self), close(self))
        )

    def unreadable(*args: Any, **kwargs: Any) -> None:
        raise ConfigError("the screen's shipped parameters are unreadable")

    monkeypatch.setattr(runtime_module, "load_guard", unreadable)
    with pytest.raises(ConfigError, match="unreadable"):
        build_runtime(Settings())
    stores = [part for part in closed if isinstance(part, WeaviateStore)]
    assert len(stores) == 1 and not stores[0].client.is_connected()
    embedders = [part for part in closed if isinstance(part, BatchedEmbedder)]
    assert embedders and not any(part._worker.is_alive() for part in embedders)
