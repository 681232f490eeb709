"""Properties over whatever a client or a source may send (Hypothesis, bounded examples).

- Request models: any JSON value is either a valid request or a validation error whose every
  problem names a field; nothing else escapes.
- The HTTP layer: any JSON, any bytes, any query text gives a success or a 4xx naming where the
  request is wrong, never a 5xx. The answer service behind it is a stand-in that echoes: what
  is under test is the API's validation (the real service is behind tests/reliability/
  test_bad_input.py and the API tests).
- The loaders: arbitrary bytes as a CSV, JSON, JSON lines, Markdown, HTML or text file beside a
  good file give records or one failure naming the file, never an exception, and never cost
  the good file its records.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from freshkb.api import create_app
from freshkb.api.schemas import AnswerRequest, FeedbackRequest, ResolveRequest
from freshkb.core.config import Settings
from freshkb.core.sources import parse_source
from freshkb.loaders import CustomerFilesLoader, DocumentFolderLoader
from freshkb.serving.results import AnswerResult

TOKEN = "properties-admin"
BOUNDED = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
MODELS: list[type[BaseModel]] = [AnswerRequest, FeedbackRequest, ResolveRequest]


def request_like(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects using the model's own field names, with any JSON values."""
    names = st.sampled_from([*model.model_fields, "extra"])
    return st.dictionaries(names, json_values, max_size=4)


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
@BOUNDED
@given(data=st.data())
def test_any_json_is_a_valid_request_or_an_error_naming_a_field(
    model: type[BaseModel], data: st.DataObject
) -> None:
    value = data.draw(json_values | request_like(model))
    try:
        model.model_validate(value)
    except ValidationError as exc:
        for problem in exc.errors():
            loc = problem["loc"]
            # A field of the model, or a key the client sent that the model does not have.
            assert not isinstance(value, dict) or (loc and loc[0] in {*model.model_fields, *value})
            assert problem["msg"]


# -- the HTTP layer -------------------------------------------------------------------------------


class EchoService:
    """Answers with the question, finds nothing, stores feedback nowhere."""

    ledger = SimpleNamespace(states=lambda: [])
    escalations = SimpleNamespace(find=lambda status: [], get=lambda id_: None)

    def answer(self, question: str, customer_id: str | None, k: int) -> AnswerResult:
        """The question back, as a normal answer."""
        return AnswerResult(answer_id=str(uuid.uuid4()), answer=question, mode="normal")

    def search(self, question: str, customer_id: str | None, k: int) -> tuple[list, list]:
        """Nothing found, nothing left out."""
        return [], []


EchoService.escalations.add_feedback = lambda *args: 1  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The real app over the echoing service, its database in a throw-away folder."""
    with tempfile.TemporaryDirectory() as data:
        app = create_app(
            Settings(data_dir=Path(data), api_tokens={TOKEN: "admin"}),
            service=EchoService(),  # type: ignore[arg-type]
        )
        with TestClient(app, raise_server_exceptions=False) as test_client:
            yield test_client


HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
ROUTES = ["/v1/answer", "/v1/feedback", "/v1/escalations/e-1/resolve"]


def assert_defined(response: Any) -> None:
    """A success, or a 4xx that says where the request is wrong; never a 5xx."""
    assert response.status_code < 500, response.text
    if response.status_code == 422:
        body = response.json()
        assert body["detail"] and all(problem["loc"] for problem in body["detail"])
        assert body["message"].startswith("invalid request: ")


@BOUNDED
@given(route=st.sampled_from(ROUTES), body=json_values | request_like(AnswerRequest))
def test_any_json_body_gets_a_defined_response(client: TestClient, route: str, body: Any):
    content = json.dumps(body).encode()
    assert_defined(client.post(route, content=content, headers=HEADERS))


@BOUNDED
@given(route=st.sampled_from(ROUTES), body=st.binary(max_size=300))
def test_any_bytes_as_a_body_get_a_defined_response(client: TestClient, route: str, body: bytes):
    assert_defined(client.post(route, content=body, headers=HEADERS))


@BOUNDED
@given(q=st.text(max_size=200), customer=st.none() | st.text(max_size=200), k=st.text(max_size=5))
def test_any_query_text_gets_a_defined_response(
    client: TestClient, q: str, customer: str | None, k: str
) -> None:
    params = {"q": q, "k": k} | ({"customer_id": customer} if customer is not None else {})
    assert_defined(client.get("/v1/search", params=params, headers=HEADERS))


# -- the loaders ----------------------------------------------------------------------------------

GOOD_POLICY = "# Returns\n\nUnworn footwear can be returned within 60 days of purchase.\n"
GOOD_CUSTOMERS = "customer_id,name,tier\nC-1,Ada Byron,Summit\nC-2,Alan Turing,Trail\n"
LOADER_EXAMPLES = settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Bytes that look like each format now and then, so parsers go past their first check.
near_text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from(list('{}[]",:#<>\n\\')), max_size=200
).map(str.encode)
any_bytes = st.binary(min_size=1, max_size=400) | near_text.filter(bool)


def assert_named_or_loaded(result: Any, name: str, good: set[str]) -> None:
    """The good file's items are all there; the arbitrary file loaded or failed by name."""
    keys = {document.key for document in result.documents}
    assert good <= keys, f"good records lost: {good - keys}"
    for failure in result.failures:
        assert failure.item.split(":")[0].split("#")[0] == name, failure
        assert failure.reason and "could not be read (" not in failure.reason, failure


@pytest.mark.timeout(300)
@LOADER_EXAMPLES
@given(suffix=st.sampled_from([".md", ".html", ".txt", ".json"]), data=any_bytes)
def test_arbitrary_bytes_in_a_document_folder_never_cost_the_good_file(
    tmp_path_factory: pytest.TempPathFactory, suffix: str, data: bytes
) -> None:
    folder = tmp_path_factory.mktemp("documents")
    (folder / "good.md").write_text(GOOD_POLICY)
    (folder / f"arbitrary{suffix}").write_bytes(data)
    source = parse_source({"name": "prop-docs", "kind": "documents", "location": str(folder)})
    result = DocumentFolderLoader(source).load()  # type: ignore[arg-type]
    assert_named_or_loaded(result, f"arbitrary{suffix}", {"good.md"})


@pytest.mark.timeout(300)
@LOADER_EXAMPLES
@given(suffix=st.sampled_from([".csv", ".json", ".jsonl"]), data=any_bytes)
def test_arbitrary_bytes_in_a_customer_folder_never_cost_the_good_file(
    tmp_path_factory: pytest.TempPathFactory, suffix: str, data: bytes
) -> None:
    folder = tmp_path_factory.mktemp("customers")
    (folder / "good.csv").write_text(GOOD_CUSTOMERS)
    (folder / f"arbitrary{suffix}").write_bytes(data)
    source = parse_source(
        {
            "name": "prop-crm",
            "kind": "customers",
            "location": str(folder),
            "customer_id": "customer_id",
        }
    )
    result = CustomerFilesLoader(source).load()  # type: ignore[arg-type]
    good = {document.key for document in result.documents if document.key.startswith("good.csv")}
    assert len(good) == 2, f"the good file's two records: {good}"
    assert_named_or_loaded(result, f"arbitrary{suffix}", good)
