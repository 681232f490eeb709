"""Bad input on every route of the HTTP API, over real HTTP (uvicorn on loopback) in front of
the real answer service (real Weaviate, the MiniLM model, a Prefect ingest, the scripted LLM).

Every kind of bad input the issue names (malformed JSON, wrong types, huge and empty fields,
NUL bytes, invalid UTF-8, 10,000-character customer ids) gets a 4xx whose body names the field,
never a 5xx; SQL-looking ids are only text: served as any other id, never an error or a leak.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import TEST_LLM_PORT, empty_index_and_ledger
from scripted_llm import scripted_llm_server
from test_answer_e2e import served
from test_ingest_e2e import documents_source, write_policies

from freshkb.api import create_app
from freshkb.core.config import Settings
from freshkb.flows.ingest import ingest_source
from freshkb.serving.runtime import build_runtime

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPTED_PORT, API_PORT = TEST_LLM_PORT + 13, TEST_LLM_PORT + 14
ANSWER, ADMIN, CUSTOMER = "bad-input-answer", "bad-input-admin", "bad-input-customer"
TOKENS = {ANSWER: "answer", ADMIN: "admin", CUSTOMER: "customer:C-1"}
LONG_ID = "C" * 10_000
SQL_IDS = ("C-1' OR '1'='1", "'; DROP TABLE escalations; --", '1" UNION SELECT * FROM x --')
ESCALATION = "/v1/escalations/{escalation_id}/resolve"


@dataclass(frozen=True)
class Bad:
    """One bad request and the field its 4xx must name (None: a status without a field)."""

    kind: str
    method: str
    route: str
    field: str | None
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    path: str | None = None  # the URL, when it differs from the route
    token: str = ADMIN
    status: int | None = 422  # None: any 4xx (routes whose refusal is theirs to choose)

    @property
    def id(self) -> str:
        """A test id: route and kind."""
        return f"{self.method} {self.route} {self.kind}"


def body_cases(
    route: str, valid: dict[str, Any], fields: dict[str, list[Any]], path: str | None = None
) -> list[Bad]:
    """Malformed, not-an-object, invalid-UTF-8 and oversized bodies of a POST route, each
    required field (those in `valid`) missing, and every wrong value given per field."""

    def bad(kind: str, name: str | None, **given: Any) -> Bad:
        return Bad(kind, "POST", route, name, path=path, **given)

    cases = [
        bad("malformed JSON", "body", content=b'{"xxx": '),
        bad("JSON array", "body", json=[valid]),
        bad("JSON null", "body", content=b"null"),
        bad("empty body", "body", content=b""),
        bad("invalid UTF-8", "body", content=b'{"x": "\xff\xfe\xc3("}'),
        bad("CESU surrogate bytes", "body", content=b'{"x": "\xed\xa0\x80"}'),
        bad("unknown field", "customerId", json={**valid, "customerId": "C-1"}),
        bad("over the size limit", None, json={**valid, "x": "y" * 40_000}, status=413),
    ]
    for name, values in fields.items():
        cases += [bad(f"{name} #{n}", name, json={**valid, name: v}) for n, v in enumerate(values)]
        if name in valid:
            missing = {key: value for key, value in valid.items() if key != name}
            cases.append(bad(f"{name} missing", name, json=missing))
    return cases


TEXT_FAULTS = ["", "   ", "a\u0000b", "\ud800", 12, ["x"], {"x": 1}, None, True]
ID_FAULTS = ["", "a\u0000b", "a\nb", " padded ", LONG_ID, 7, ["C-1"], {"id": 1}]


def all_cases() -> list[Bad]:
    """Every bad request tried, per route."""
    answer = body_cases(
        "/v1/answer",
        {"question": "How long does standard shipping take?"},
        {
            "question": [*TEXT_FAULTS, "x" * 10_000, "\u001b[31mred"],
            "customer_id": [v for v in ID_FAULTS if v is not None],
            "k": [0, 21, -1, "many", 1.5, [5], None, "5; DROP TABLE"],
        },
    )
    feedback = body_cases(
        "/v1/feedback",
        {"answer_id": "a-1", "helpful": True},
        {
            "answer_id": [*ID_FAULTS, None],
            "helpful": ["perhaps", 2, None, [True], {"yes": 1}],
            "comment": ["x" * 5_000, "a\u0000b", 5, ["c"]],
        },
    )
    resolve = body_cases(
        ESCALATION,
        {"answer": "Within 60 days."},
        {
            "answer": [*TEXT_FAULTS, "x" * 12_000],
            "resolved_by": ["", "a\u0000b", LONG_ID[:200], 3, None],
        },
        path="/v1/escalations/e-1/resolve",
    )
    search = [
        Bad("q missing", "GET", "/v1/search", "q", params={}),
        Bad("q empty", "GET", "/v1/search", "q", params={"q": ""}),
        Bad("q huge", "GET", "/v1/search", "q", params={"q": "x" * 5_000}),
        Bad("q NUL", "GET", "/v1/search", "q", path="/v1/search?q=a%00b"),
        Bad("q invalid UTF-8", "GET", "/v1/search", "q", path="/v1/search?q=%FF%FE"),
        Bad("q escape char", "GET", "/v1/search", "q", path="/v1/search?q=a%1Bb"),
        Bad(
            "customer_id 10k",
            "GET",
            "/v1/search",
            "customer_id",
            params={"q": "x", "customer_id": LONG_ID},
        ),
        Bad(
            "customer_id empty",
            "GET",
            "/v1/search",
            "customer_id",
            params={"q": "x", "customer_id": ""},
        ),
        Bad(
            "customer_id NUL",
            "GET",
            "/v1/search",
            "customer_id",
            path="/v1/search?q=x&customer_id=C%00",
        ),
        Bad("k text", "GET", "/v1/search", "k", params={"q": "x", "k": "many"}),
        Bad("k zero", "GET", "/v1/search", "k", params={"q": "x", "k": "0"}),
        Bad("k huge", "GET", "/v1/search", "k", params={"q": "x", "k": "9" * 40}),
    ]
    escalations = [
        Bad("status unknown", "GET", "/v1/escalations", "status", params={"status": "opened"}),
        Bad(
            "status NUL", "GET", "/v1/escalations", "status", path="/v1/escalations?status=open%00"
        ),
        Bad(
            "status invalid UTF-8",
            "GET",
            "/v1/escalations",
            "status",
            path="/v1/escalations?status=%C3%28",
        ),
        Bad(
            "id NUL",
            "POST",
            ESCALATION,
            "path",
            json={"answer": "x"},
            path="/v1/escalations/e%00/resolve",
        ),
        Bad(
            "id invalid UTF-8",
            "POST",
            ESCALATION,
            "path",
            json={"answer": "x"},
            path="/v1/escalations/%FF/resolve",
        ),
        Bad(
            "id 10k",
            "POST",
            ESCALATION,
            None,
            json={"answer": "x"},
            path=f"/v1/escalations/{LONG_ID}/resolve",
            status=404,
        ),
    ]
    auth = [
        Bad("no token", "GET", "/v1/sources", None, token="", status=401),
        Bad("10k token", "GET", "/v1/sources", None, token="t" * 10_000, status=401),
        Bad("SQL token", "GET", "/v1/sources", None, token="' OR 1=1 --", status=401),
        Bad("junk query", "GET", "/v1/sources", "x", path="/v1/sources?x=%FF"),
        Bad("junk query", "GET", "/healthz", "x", path="/healthz?x=%00", token=""),
        Bad("junk query", "GET", "/readyz", "x", path="/readyz?x=%FF", token=""),
        Bad(
            "customer token, other customer",
            "POST",
            "/v1/answer",
            None,
            json={"question": "x y z", "customer_id": "C-2"},
            token=CUSTOMER,
            status=403,
        ),
    ]
    return answer + feedback + resolve + search + escalations + auth + upload_cases() + log_cases()


def id_in_path_cases(method: str, route: str, path: str, json: Any = None) -> list[Bad]:
    """An answer id in the path that is not text, too long, or SQL; no token; a non-admin."""
    return [
        Bad("id NUL", method, route, "path", json=json, path=path.format("a%00b")),
        Bad("id invalid UTF-8", method, route, "path", json=json, path=path.format("%FF")),
        Bad("id 10k", method, route, None, json=json, path=path.format(LONG_ID), status=None),
        Bad("id SQL", method, route, None, json=json, path=path.format(SQL_IDS[0]), status=404),
        Bad(
            "no token",
            method,
            route,
            None,
            json=json,
            path=path.format("a-1"),
            token="",
            status=401,
        ),
        Bad(
            "answer token",
            method,
            route,
            None,
            json=json,
            path=path.format("a-1"),
            token=ANSWER,
            status=403,
        ),
    ]


def log_cases() -> list[Bad]:
    """The answer log and review routes (admin only)."""
    logged = id_in_path_cases("GET", "/v1/answers/{answer_id}", "/v1/answers/{}")
    mark = body_cases(
        "/v1/review/{answer_id}",
        {"verdict": "incorrect"},
        {
            "verdict": ["right", "", None, 5, ["correct"]],
            "correction": ["x" * 12_000, "a\u0000b", 5, ["c"]],
            "note": ["x" * 3_000, "a\u0000b", 7],
            "reviewer": ["", "a\u0000b", LONG_ID[:200], 3],
        },
        path="/v1/review/a-1",
    )
    marked = id_in_path_cases(
        "POST", "/v1/review/{answer_id}", "/v1/review/{}", json={"verdict": "correct"}
    )
    marked = [bad for bad in marked if bad.kind != "id SQL"]  # unknown: 404 too, checked above
    queue = [
        Bad("pending not a flag", "GET", "/v1/review", "pending", params={"pending": "maybe"}),
        Bad("no token", "GET", "/v1/review", None, token="", status=401),
        Bad("answer token", "GET", "/v1/review", None, token=ANSWER, status=403),
    ]
    return logged + mark + marked + queue


def upload_cases() -> list[Bad]:
    """The upload routes: ids in the path that are not text, and no credential."""
    cases = []
    for method, route, path in (
        ("GET", "/v1/uploads", "/v1/uploads"),
        ("GET", "/v1/sources/{name}/documents", "/v1/sources/{}/documents"),
        ("POST", "/v1/sources/{name}/documents", "/v1/sources/{}/documents"),
        ("DELETE", "/v1/sources/{name}/documents/{document}", "/v1/sources/{}/documents/d.md"),
    ):
        cases.append(
            Bad("no token", method, route, None, path=path.format("kb"), token="", status=None)
        )
        if "{}" in path:
            for kind, name in (("NUL", "k%00b"), ("invalid UTF-8", "%FF"), ("escape", "k%1B")):
                cases.append(Bad(f"name {kind}", method, route, "path", path=path.format(name)))
            cases.append(
                Bad("name 10k", method, route, None, path=path.format(LONG_ID), status=None)
            )
            cases.append(
                Bad("name SQL", method, route, None, path=path.format("x' OR 1=1"), status=None)
            )
    return cases


CASES = all_cases()


@pytest.fixture(scope="module")
def api(
    weaviate_settings: Any, prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The API over the real answer service, over a freshly ingested policy folder."""
    empty_index_and_ledger(weaviate_settings)
    policies = tmp_path_factory.mktemp("bad-input-kb")
    write_policies(policies)
    report = ingest_source(source_config=documents_source(policies, "bad-input-kb"))
    assert report.completed, report.error
    with scripted_llm_server(SCRIPTED_PORT) as llm_url:
        runtime = build_runtime(
            Settings(llm_base_url=llm_url, llm_model="grounded", api_tokens=TOKENS)
        )
        app = create_app(runtime.service.settings, runtime.service, runtime.ready)
        with served(app, API_PORT) as url:
            yield url
        runtime.close()


def send(client: httpx.Client, bad: Bad) -> httpx.Response:
    """Send one bad request as given (raw bytes, JSON or query parameters)."""
    headers = {"Authorization": f"Bearer {bad.token}"} if bad.token else {}
    url = bad.path or bad.route
    if bad.content is not None or bad.json is not None:
        headers["Content-Type"] = "application/json"
        # Lone surrogates travel as JSON escapes (\\ud800), as a client would send them.
        content = bad.content if bad.content is not None else json.dumps(bad.json).encode()
        return client.request(bad.method, url, content=content, headers=headers)
    return client.request(bad.method, url, params=bad.params or None, headers=headers)


def test_every_route_of_the_api_is_tried() -> None:
    app = create_app(Settings(), service=None)  # type: ignore[arg-type]
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    tried = {(bad.method, bad.route) for bad in CASES}
    assert routes == tried, f"routes without bad-input cases: {routes - tried}"
    assert len(CASES) >= 100


def test_every_bad_input_gets_a_4xx_naming_the_field(api: str) -> None:
    failures = []
    with httpx.Client(base_url=api, timeout=120) as client:
        for bad in CASES:
            response = send(client, bad)
            expected = bad.status or response.status_code
            if response.status_code != expected or not 400 <= response.status_code < 500:
                failures.append(f"{bad.id}: {response.status_code} {response.text[:200]}")
                continue
            if bad.field is None:
                continue
            body = response.json()
            named = {str(part) for problem in body["detail"] for part in problem["loc"]}
            if bad.field not in named or bad.field not in body["message"]:
                failures.append(f"{bad.id}: {bad.field} not named in {body}")
            if LONG_ID in response.text or "\x00" in response.text:
                failures.append(f"{bad.id}: the bad value is echoed back")
    assert not failures, "\n".join(failures)


@pytest.mark.timeout(300)
def test_sql_looking_ids_are_only_text(api: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    question = "How long does standard shipping take?"
    with httpx.Client(base_url=api, timeout=120, headers=headers) as client:
        for customer in SQL_IDS:
            answer = client.post("/v1/answer", json={"question": question, "customer_id": customer})
            assert answer.status_code == 200, answer.text
            assert answer.json()["mode"] in ("normal", "degraded"), answer.json()
            assert all(c["source"] == "bad-input-kb" for c in answer.json()["citations"])
            found = client.get("/v1/search", params={"q": question, "customer_id": customer})
            assert found.status_code == 200, found.text
            assert {hit["source"] for hit in found.json()["hits"]} == {"bad-input-kb"}
            assert client.get(f"/v1/escalations/{customer}/resolve").status_code == 405
            resolve = client.post(f"/v1/escalations/{customer}/resolve", json={"answer": "x"})
            assert resolve.status_code == 404, resolve.text
            feedback = client.post("/v1/feedback", json={"answer_id": customer, "helpful": False})
            assert feedback.status_code == 201, feedback.text
        listed = client.get("/v1/escalations", params={"status": "open"})
        assert listed.status_code == 200
        assert client.get("/v1/sources").json()[0]["name"] == "bad-input-kb", "tables intact"
