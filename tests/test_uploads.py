"""Uploads for knowledge owners (issue 12, sections 2 and 3).

Bad input first, over the API (a TestClient) and the landing folder itself: every refusal is a
clear error that changes nothing, neither the folder nor the register. Then the real path over
a uvicorn server, a real Weaviate and real Prefect flow runs: an upload goes pending ->
validated -> ingested and is found by search, a file that only looks right fails with the
loader's reason, a removed document leaves the index, two uploads of one name at once leave
one whole file, and `freshkb upload --wait` does the same from a shell.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import empty_index_and_ledger
from fastapi.testclient import TestClient
from pydantic import ValidationError

from freshkb.api import create_app
from freshkb.api.auth import credential_for
from freshkb.api.tokens import local_tokens
from freshkb.core.config import Settings
from freshkb.core.sources import get_source
from freshkb.loaders.landing import UploadRejected, stage
from freshkb.store.uploads import UploadRegister

UPLOAD, ADMIN, ANSWER = "tok-upload", "tok-admin", "tok-answer"
ONLY_CRM, ONLY_OTHER = "tok-upload-crm", "tok-upload-other"
TOKENS = {
    UPLOAD: "upload",
    ADMIN: "admin",
    ANSWER: "answer",
    ONLY_CRM: "upload:crm",
    ONLY_OTHER: "upload:other-docs",
}
SMALL_LIMIT = 4096
# Away from the other API tests' ports (test_answer_e2e, test_api), inside this helper's range.
API_PORT = int(os.environ.get("FRESHKB_TEST_UPLOAD_API_PORT", "25500"))
CONFIG = """\
sources:
  - name: docs
    kind: documents
    location: landing
    owner: policy-team@example.com
    expectations: {min_documents: 1, max_delete_share: 1.0}
  - name: other-docs
    kind: documents
    location: other
  - name: crm
    kind: customers
    location: crm
    customer_id: customer_id
"""
LANTERN = """# Aurora lantern care

The Aurora lantern's glass globe is replaced free of charge for nineteen months after purchase.
Clean the reflector with a dry cloth; never immerse the lantern in water.
"""


def auth(token: str) -> dict[str, str]:
    """Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


def write_config(root: Path) -> Path:
    """A config with two documents sources and a customers source, folders under `root`."""
    path = root / "freshkb.yaml"
    path.write_text(CONFIG)
    (root / "crm").mkdir()
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file, link and folder under `folder` (hidden ones too, the database left out),
    with a hash of what each file holds."""
    found: dict[str, str] = {}
    for entry in sorted(folder.rglob("*")) if folder.exists() else []:
        name = entry.relative_to(folder).as_posix()
        if name.split("/")[0] == "data":
            continue
        if entry.is_symlink():
            found[name] = "link->" + os.readlink(entry)
        elif entry.is_dir():
            found[name] = "folder"
        else:
            found[name] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return found


def minimal_pdf() -> bytes:
    """A one-page PDF with a text line, small enough to build by hand."""
    return (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 300 144]>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )


def zip_without_word() -> bytes:
    """A ZIP archive that is not a Word document."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


# -- the token model ---------------------------------------------------------------------------


def test_upload_scopes_parse_and_bad_ones_are_refused_at_start() -> None:
    settings = Settings(api_tokens={"a": "upload", "b": "upload:docs,faq-2"})
    assert credential_for(settings.api_tokens, "a").sources is None  # type: ignore[union-attr]
    limited = credential_for(settings.api_tokens, "b")
    assert limited is not None and limited.scope == "upload"
    assert limited.sources == frozenset({"docs", "faq-2"})
    for bad in ("upload:", "upload:Docs", "upload:a,,b", "uploads"):
        with pytest.raises(ValidationError, match="upload:<source>"):
            Settings(api_tokens={"x": bad})


def test_local_tokens_include_an_upload_token_added_to_an_older_file(tmp_path: Path) -> None:
    (tmp_path / "api-tokens.json").write_text('{"old-answer": "answer", "old-admin": "admin"}')
    path, tokens = local_tokens(tmp_path)
    assert sorted(tokens.values()) == ["admin", "answer", "upload"]
    assert tokens["old-answer"] == "answer"  # existing tokens are kept
    assert path.stat().st_mode & 0o777 == 0o600
    assert local_tokens(tmp_path) == (path, tokens)


# -- bad input over the API: a clear error, nothing changed --------------------------------------


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An API app over a throw-away config and database, with a small upload limit."""
    config = write_config(tmp_path)
    settings = Settings(
        config_file=config,
        data_dir=tmp_path / "data",
        api_tokens=TOKENS,
        upload_max_bytes=SMALL_LIMIT,
    )
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "kept.md").write_text("# Kept\n\nAlready here.\n")
    with TestClient(create_app(settings, service=None)) as client:  # type: ignore[arg-type]
        yield {"client": client, "landing": landing, "settings": settings, "root": tmp_path}


def registered(settings: Settings, source: str = "docs") -> list[str]:
    """Names the upload register holds for a source."""
    register = UploadRegister(settings.ledger_database_url)
    try:
        return [doc.name for doc in register.documents(source)]
    finally:
        register.close()


BAD_UPLOADS = [
    # (case, source, token, file name, content, status, words the message must contain)
    ("dot-dot name", "docs", UPLOAD, "../escape.md", b"# x\n", 400, "without folders, '..'"),
    ("nested dot-dot", "docs", UPLOAD, "a/../../escape.md", b"# x\n", 400, "a file name only"),
    ("absolute path", "docs", UPLOAD, "/etc/cron.d/evil.md", b"# x\n", 400, "a file name only"),
    ("backslash path", "docs", UPLOAD, "..\\escape.md", b"# x\n", 400, "a file name only"),
    ("hidden name", "docs", UPLOAD, ".sneaky.md", b"# x\n", 400, "hidden"),
    ("zero bytes", "docs", UPLOAD, "empty.md", b"", 422, "empty file (0 bytes)"),
    ("over the limit", "docs", UPLOAD, "big.md", b"a" * (SMALL_LIMIT + 1), 413, "upload limit"),
    (
        "exe renamed pdf",
        "docs",
        UPLOAD,
        "manual.pdf",
        b"MZ\x90\x00" + bytes(600),
        415,
        "Windows executable",
    ),
    ("truncated pdf", "docs", UPLOAD, "cut.pdf", minimal_pdf()[:-7], 415, "truncated PDF"),
    (
        "zip named docx",
        "docs",
        UPLOAD,
        "sheet.docx",
        zip_without_word(),
        415,
        "not a Word document",
    ),
    ("binary named md", "docs", UPLOAD, "notes.md", b"# a\x00b\n", 415, "NUL bytes"),
    ("latin-1 text", "docs", UPLOAD, "notes.txt", "café".encode("latin-1"), 415, "UTF-8"),
    (
        "json not an article",
        "docs",
        UPLOAD,
        "faq.json",
        b'{"q": 1}',
        415,
        "not a knowledge article",
    ),
    ("unknown type", "docs", UPLOAD, "tool.exe", b"MZ" + bytes(100), 415, "is not taken"),
    ("unknown source", "nope", UPLOAD, "a.md", b"# a\n", 404, "no source named 'nope'"),
    ("customers source", "crm", UPLOAD, "a.md", b"# a\n", 409, "holds customer records"),
    ("no token", "docs", None, "a.md", b"# a\n", 401, "missing bearer token"),
    ("answer token", "docs", ANSWER, "a.md", b"# a\n", 403, "'upload' scope"),
    (
        "token of another source",
        "docs",
        ONLY_OTHER,
        "a.md",
        b"# a\n",
        403,
        "uploads to other-docs only",
    ),
]


@pytest.mark.parametrize(
    ("source", "token", "name", "content", "status", "words"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_upload_is_refused_clearly_and_changes_nothing(
    desk: dict[str, Any],
    source: str,
    token: str | None,
    name: str,
    content: bytes,
    status: int,
    words: str,
) -> None:
    before = snapshot(desk["landing"]), snapshot(desk["root"])
    headers = auth(token) if token else {}
    response = desk["client"].post(
        f"/v1/sources/{source}/documents", files={"file": (name, content)}, headers=headers
    )
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert (snapshot(desk["landing"]), snapshot(desk["root"])) == before
    assert registered(desk["settings"]) == []


def test_symlink_in_the_folder_is_never_replaced_or_followed(desk: dict[str, Any]) -> None:
    outside = desk["root"] / "outside.md"
    outside.write_text("# Outside\n\nnot part of any source\n")
    (desk["landing"] / "linked.md").symlink_to(outside)
    before = snapshot(desk["landing"]), outside.read_bytes()
    response = desk["client"].post(
        "/v1/sources/docs/documents",
        files={"file": ("linked.md", b"# Replaced\n")},
        headers=auth(UPLOAD),
    )
    assert response.status_code == 409
    assert "symlink" in response.json()["detail"]
    assert (snapshot(desk["landing"]), outside.read_bytes()) == before


def test_one_bad_file_in_a_request_lands_none_of_them(desk: dict[str, Any]) -> None:
    before = snapshot(desk["landing"])
    response = desk["client"].post(
        "/v1/sources/docs/documents",
        files=[("file", ("good.md", b"# Good\n")), ("file", ("bad.pdf", b"MZ" + bytes(64)))],
        headers=auth(UPLOAD),
    )
    assert response.status_code == 415
    assert snapshot(desk["landing"]) == before


def test_bad_removals_are_refused_and_change_nothing(desk: dict[str, Any]) -> None:
    before = snapshot(desk["landing"]), snapshot(desk["root"])
    client = desk["client"]
    cases = [
        ("/v1/sources/docs/documents/..%2Ffreshkb.yaml", UPLOAD, 400),
        ("/v1/sources/docs/documents/missing.md", UPLOAD, 404),
        ("/v1/sources/docs/documents/kept.md", ANSWER, 403),
        ("/v1/sources/docs/documents/kept.md", ONLY_CRM, 403),
        ("/v1/sources/nope/documents/kept.md", UPLOAD, 404),
    ]
    for path, token, status in cases:
        response = client.delete(path, headers=auth(token))
        assert response.status_code == status, (path, response.text)
    assert (snapshot(desk["landing"]), snapshot(desk["root"])) == before


def test_listing_shows_a_file_placed_by_hand_as_pending(desk: dict[str, Any]) -> None:
    response = desk["client"].get("/v1/sources/docs/documents", headers=auth(UPLOAD))
    assert response.status_code == 200
    body = response.json()
    assert body["run"] == "idle" and body["last_run"] is None
    assert [(d["name"], d["state"], d["uploaded_by"]) for d in body["documents"]] == [
        ("kept.md", "pending", None)
    ]
    sources = desk["client"].get("/v1/uploads", headers=auth(ONLY_OTHER)).json()
    assert [s["name"] for s in sources] == ["other-docs"]  # a limited token sees its own only


# -- the landing folder on its own -------------------------------------------------------------


def test_two_uploads_of_one_name_at_once_leave_one_whole_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    source = get_source("docs", config)
    contents = [(f"# Version {n}\n\n" + f"line {n}\n" * 60_000).encode() for n in (1, 2)]
    barrier = threading.Barrier(2)

    def slowly(data: bytes) -> Iterator[bytes]:
        barrier.wait()  # both writes are in flight at once
        for start in range(0, len(data), 64 * 1024):
            time.sleep(0.002)
            yield data[start : start + 64 * 1024]

    def land(data: bytes) -> None:
        stage(source, "same.md", slowly(data), 10_000_000).commit()

    workers = [threading.Thread(target=land, args=(data,)) for data in contents]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    landing = tmp_path / "landing"
    assert sorted(os.listdir(landing)) == ["same.md"]  # no temporary file left behind
    assert (landing / "same.md").read_bytes() in contents  # one whole version, never a mix


def test_stage_refused_midway_leaves_no_temporary_file(tmp_path: Path) -> None:
    source = get_source("docs", write_config(tmp_path))
    with pytest.raises(UploadRejected) as refused:
        stage(source, "big.md", iter([b"a" * 1000] * 5), 4000)
    assert refused.value.problem == "too_large"
    assert os.listdir(tmp_path / "landing") == []


# -- the real path: uvicorn, Weaviate, Prefect flow runs ----------------------------------------


@pytest.fixture(scope="module")
def live(
    weaviate_settings: Any, prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The API on a real server over an empty index, a config whose `docs` source takes
    uploads, and one file placed in its folder by hand."""
    from test_answer_e2e import served

    empty_index_and_ledger(weaviate_settings)
    root = tmp_path_factory.mktemp("uploads")
    config = write_config(root)
    config.write_text(
        CONFIG.replace("min_documents: 1,", "min_documents: 1, max_failed_share: 1.0,")
    )
    (root / "landing").mkdir()
    (root / "landing" / "kept.md").write_text("# Kept\n\nThe kept page says hello.\n")
    settings = Settings(config_file=config, api_tokens=TOKENS)
    with served(create_app(settings, service=None), API_PORT) as url:  # type: ignore[arg-type]
        yield {"url": url, "root": root, "landing": root / "landing", "settings": settings}


def wait_for_states(
    live: dict[str, Any], wanted: dict[str, str], timeout: float = 180
) -> dict[str, dict[str, Any]]:
    """Poll the listing until each named document is in its wanted state (and no run goes)."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(
            f"{live['url']}/v1/sources/docs/documents", headers=auth(UPLOAD), timeout=30
        ).json()
        documents = {doc["name"]: doc for doc in body["documents"]}
        states = {name: documents.get(name, {}).get("state") for name in wanted}
        if states == wanted and body["run"] == "idle":
            return documents
        assert time.monotonic() < deadline, f"still {states} (run {body['run']}), wanted {wanted}"
        time.sleep(0.5)


def post(live: dict[str, Any], name: str, content: bytes, token: str = UPLOAD) -> httpx.Response:
    """Upload one file to the `docs` source."""
    return httpx.post(
        f"{live['url']}/v1/sources/docs/documents",
        files={"file": (name, content)},
        headers=auth(token),
        timeout=60,
    )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_upload_goes_pending_to_ingested_and_is_searchable(live: dict[str, Any]) -> None:
    from freshkb.core import ids
    from freshkb.embeddings.embedder import get_embedder
    from freshkb.store.weaviate_store import open_store

    response = post(live, "lantern.md", LANTERN.encode())
    assert response.status_code == 202, response.text
    receipt = response.json()
    assert receipt["run"] == "started"
    assert [(d["name"], d["state"]) for d in receipt["documents"]] == [("lantern.md", "pending")]
    documents = wait_for_states(live, {"lantern.md": "ingested", "kept.md": "ingested"})
    lantern = documents["lantern.md"]
    assert lantern["content_hash"] == ids.content_hash(LANTERN.encode())
    assert lantern["chunks"] >= 1 and lantern["reason"] is None
    assert lantern["uploaded_by"].startswith("upload:") and lantern["last_run"]
    assert documents["kept.md"]["uploaded_by"] is None  # placed by hand, seen by the same run
    listing = httpx.get(f"{live['url']}/v1/sources/docs/documents", headers=auth(ADMIN)).json()
    assert listing["last_run"]["status"] == "completed"
    assert listing["last_run"]["flow_run_id"] == lantern["last_run"]
    settings = live["settings"]
    embedder = get_embedder(settings.embedding_model, settings.embedding_device, 8)
    question = "how long is the Aurora lantern glass globe replaced for free?"
    with open_store(settings) as store:
        hits = store.search(question, embedder.embed([question])[0], k=1)
    assert hits and hits[0].source == "docs" and hits[0].document_key == "lantern.md"
    assert "nineteen months" in hits[0].text


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_file_that_passes_the_door_but_not_the_loader_fails_with_the_reason(
    live: dict[str, Any],
) -> None:
    # A well-formed knowledge article with nothing in it: the door takes it, the loader not.
    hollow = b'{"id": "kb-7", "title": "Hollow article", "content": ""}'
    response = post(live, "hollow.json", hollow)
    assert response.status_code == 202, response.text
    documents = wait_for_states(live, {"hollow.json": "failed", "lantern.md": "ingested"})
    assert "no text could be extracted" in documents["hollow.json"]["reason"]
    removed = httpx.delete(
        f"{live['url']}/v1/sources/docs/documents/hollow.json", headers=auth(UPLOAD), timeout=30
    )
    assert removed.status_code == 200 and not (live["landing"] / "hollow.json").exists()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_uploads_of_one_name_at_once_over_http_leave_one_whole_registered_file(
    live: dict[str, Any],
) -> None:
    from freshkb.core import ids

    versions = [f"# Tide table {n}\n\nHigh tide at {n} o'clock.\n".encode() for n in (3, 9)]
    barrier = threading.Barrier(2)
    responses: list[httpx.Response] = []

    def send(content: bytes) -> None:
        barrier.wait()
        responses.append(post(live, "tides.md", content))

    workers = [threading.Thread(target=send, args=(v,)) for v in versions]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(r.status_code for r in responses) == [202, 202]
    landed = (live["landing"] / "tides.md").read_bytes()
    assert landed in versions
    assert not [p for p in os.listdir(live["landing"]) if p.startswith(".")]
    documents = wait_for_states(live, {"tides.md": "ingested"})
    assert documents["tides.md"]["content_hash"] == ids.content_hash(landed)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_document_over_the_api_json_body_limit_is_taken_up_to_the_upload_limit(
    live: dict[str, Any],
) -> None:
    settings = live["settings"]
    handbook = ("# Trail handbook\n\n" + "Keep to the marked trail after dusk.\n" * 1200).encode()
    assert settings.api_max_body_bytes < len(handbook) < settings.upload_max_bytes
    response = post(live, "handbook.md", handbook)
    assert response.status_code == 202, response.text
    assert (live["landing"] / "handbook.md").read_bytes() == handbook
    documents = wait_for_states(live, {"handbook.md": "ingested"})
    assert documents["handbook.md"]["size_bytes"] == len(handbook)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_removed_document_leaves_the_folder_and_the_index(live: dict[str, Any]) -> None:
    from freshkb.core.records import SourceKind
    from freshkb.store.weaviate_store import open_store

    response = httpx.delete(
        f"{live['url']}/v1/sources/docs/documents/lantern.md", headers=auth(UPLOAD), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["run"] in ("started", "queued")
    assert not (live["landing"] / "lantern.md").exists()
    documents = wait_for_states(live, {"kept.md": "ingested"})
    assert "lantern.md" not in documents
    with open_store(live["settings"]) as store:
        keys = {d.key for d in store.stored_documents("docs", SourceKind.DOCUMENTS).values()}
    assert "lantern.md" not in keys and "kept.md" in keys


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_upload_waits_for_ingest_and_refuses_a_symlink(live: dict[str, Any]) -> None:
    import json

    from typer.testing import CliRunner

    from freshkb.cli import app

    guide = live["root"] / "guide.md"
    guide.write_text("# Stove guide\n\nThe Ember stove burns for four hours on one canister.\n")
    link = live["root"] / "link.md"
    link.symlink_to(guide)
    config = str(live["settings"].config_file)
    runner = CliRunner()
    refused = runner.invoke(app, ["upload", "docs", str(link), "--config", config])
    assert refused.exit_code == 2
    assert "is a symlink" in refused.output and not (live["landing"] / "link.md").exists()
    done = runner.invoke(
        app, ["upload", "docs", str(guide), "--wait", "--json", "--config", config]
    )
    assert done.exit_code == 0, done.output
    states = {doc["name"]: doc for doc in json.loads(done.stdout)}
    assert states["guide.md"]["state"] == "ingested" and states["guide.md"]["chunks"] >= 1
    assert states["guide.md"]["uploaded_by"].startswith("cli")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hundred_megabyte_upload_is_refused_at_once_and_changes_nothing(
    live: dict[str, Any], tmp_path: Path
) -> None:
    big = tmp_path / "huge.pdf"
    with big.open("wb") as handle:  # 100 MB, sparse: cheap to make, streamed for real
        handle.truncate(100 * 1024 * 1024)
    before = snapshot(live["landing"])
    started = time.monotonic()
    with big.open("rb") as handle:
        response = httpx.post(
            f"{live['url']}/v1/sources/docs/documents",
            files={"file": ("huge.pdf", handle)},
            headers=auth(UPLOAD),
            timeout=60,
        )
    assert response.status_code == 413
    assert "over" in response.json()["detail"]
    assert snapshot(live["landing"]) == before
    assert time.monotonic() - started < 30


@pytest.mark.integration
@pytest.mark.slow
def test_runs_of_one_source_never_overlapped(live: dict[str, Any]) -> None:
    from freshkb.store.ledger import Ledger

    ledger = Ledger(live["settings"].ledger_database_url)
    try:
        runs = sorted(ledger.runs("docs", 100), key=lambda run: run.started_at)
    finally:
        ledger.close()
    assert len(runs) >= 4
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at is not None and earlier.finished_at <= later.started_at
