"""What a knowledge owner calls (upload scope, or admin): put documents into a documents source,
watch each go pending -> validated -> ingested (or failed, with why), remove one; and the page
that does all of it in a browser (/ui).

Every refusal changes nothing: the name, the size (counted as the bytes arrive, and the declared
length before any are read), and the type by content are all checked before one atomic rename
puts the file in the source's folder (freshkb/loaders/landing.py). Then the source's flow runs
in the background, never two at once per source (freshkb/flows/uploads.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from starlette.datastructures import UploadFile

from freshkb.api.auth import Credential, UploadScope
from freshkb.api.upload_schemas import (
    DocumentStatus,
    RemovalReceipt,
    RunSummary,
    SourceDocuments,
    UploadReceipt,
    UploadSource,
)
from freshkb.core.config import Settings
from freshkb.core.errors import ConfigError
from freshkb.core.sources import AnySource, DocumentSourceConfig, load_sources
from freshkb.flows.uploads import run_state, trigger_source_run
from freshkb.loaders.landing import (
    ACCEPTED,
    LandedFile,
    StagedFile,
    UploadRejected,
    remove,
    stage,
)
from freshkb.store.ledger import Ledger
from freshkb.store.uploads import UploadRegister, source_documents

router = APIRouter(tags=["uploads"])
page = APIRouter(include_in_schema=False)
STATUS = {
    "name": 400,
    "missing": 404,
    "source": 409,
    "conflict": 409,
    "too_large": 413,
    "type": 415,
    "empty": 422,
}
MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file in one upload request
MAX_FILES = 20
BLOCK = 1 << 20
PAGE_ASSETS = {"index.html": "text/html", "app.js": "text/javascript", "page.css": "text/css"}
# The request bodies the upload route reads and limits itself, as the bytes arrive (against
# upload_max_bytes), rather than the API's small body limit for JSON requests.
STREAMED_BODIES = re.compile(r"^/v1/sources/[^/]+/documents$")
SourceName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


@dataclass(frozen=True)
class UploadDesk:
    """What the upload routes share: the settings, the upload register and the ledger."""

    settings: Settings
    register: UploadRegister
    ledger: Ledger
    # A commit and its register entry go together, so the entry's hash is the file's.
    commits: threading.Lock = field(default_factory=threading.Lock)

    def source(self, name: str, credential: Credential) -> AnySource:
        """The declared source `name` the credential may upload to; 403/404 otherwise."""
        credential.may_upload_to(name)
        try:
            declared = load_sources(self.settings.config_file)
        except ConfigError as exc:
            raise HTTPException(503, f"the sources config cannot be read: {exc}") from exc
        for source in declared:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in declared if isinstance(s, DocumentSourceConfig))
        raise HTTPException(404, f"no source named {name!r} (documents sources: {known or 'none'})")


def install(app: FastAPI, settings: Settings) -> None:
    """Add the upload routes and the page to an app, over the settings' database."""
    app.state.uploads = UploadDesk(
        settings,
        UploadRegister(settings.ledger_database_url),
        Ledger(settings.ledger_database_url),
    )
    app.include_router(router)
    app.include_router(page)


def upload_desk(request: Request) -> UploadDesk:
    """The desk `install` put on the app."""
    desk: UploadDesk = request.app.state.uploads
    return desk


Desk = Annotated[UploadDesk, Depends(upload_desk)]


def refused(exc: UploadRejected) -> HTTPException:
    """An upload refusal as an HTTP error with the status its problem calls for."""
    return HTTPException(STATUS[exc.problem], str(exc))


# -- routes ------------------------------------------------------------------------------------

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": f"one or more documents ({', '.join(ACCEPTED)})",
                        }
                    },
                }
            }
        },
    }
}


@router.get("/v1/uploads")
def upload_sources(credential: UploadScope, desk: Desk) -> list[UploadSource]:
    """The documents sources this token may upload to, with their freshness."""
    declared = load_sources(desk.settings.config_file)
    states = {state.name: state for state in desk.ledger.states(declared=declared)}
    return [
        UploadSource.of(source, states[source.name], run_state(source.name), desk.settings)
        for source in declared
        if isinstance(source, DocumentSourceConfig)
        and (credential.sources is None or source.name in credential.sources)
    ]


@router.post(
    "/v1/sources/{name}/documents",
    status_code=202,
    openapi_extra=UPLOAD_BODY,
    responses={code: {"description": problem} for problem, code in STATUS.items()},
)
async def upload(
    name: SourceName, request: Request, credential: UploadScope, desk: Desk
) -> UploadReceipt:
    """Put documents into the source's folder, then run the source's flow in the background.

    All files of one request land, or none does."""
    source = desk.source(name, credential)
    limit = desk.settings.upload_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
        raise HTTPException(413, f"upload of {declared} bytes is over the limit of {limit} bytes")
    form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
    files = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
    try:
        landed = await run_in_threadpool(_land_all, desk, source, files, credential.name)
    finally:
        await form.close()
    ticket = trigger_source_run(name, desk.settings)
    documents = {doc.name: doc for doc in desk.register.documents(name)}
    return UploadReceipt(
        source=name,
        run=ticket.outcome,
        documents=[DocumentStatus.of(documents[item.name]) for item in landed],
    )


def _land_all(
    desk: UploadDesk, source: AnySource, files: list[UploadFile], uploaded_by: str
) -> list[LandedFile]:
    """Stage every file, then commit and register them all; any refusal discards every
    staged file."""
    if not files:
        raise HTTPException(422, "no document: send each as a multipart field named 'file'")
    names = [upload.filename or "" for upload in files]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise HTTPException(400, f"the same name twice in one upload: {', '.join(repeated)}")
    staged: list[StagedFile] = []
    limit = desk.settings.upload_max_bytes
    try:
        for upload in files:
            staged.append(stage(source, upload.filename or "", _blocks(upload.file), limit))
        with desk.commits:
            landed = [item.commit() for item in staged]
            for item in landed:
                desk.register.record_upload(
                    source.name, item.name, item.content_hash, item.size_bytes, uploaded_by
                )
        return landed
    except UploadRejected as exc:
        raise refused(exc) from exc
    finally:
        for leftover in staged:
            leftover.discard()


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    while block := stream.read(BLOCK):
        yield block


@router.get("/v1/sources/{name}/documents", responses={403: {}, 404: {}, 409: {}})
def documents(name: SourceName, credential: UploadScope, desk: Desk) -> SourceDocuments:
    """Every document of the source with its state, and the source's last run."""
    source = desk.source(name, credential)
    if not isinstance(source, DocumentSourceConfig):
        raise HTTPException(409, f"source {name!r} holds customer records, not documents")
    listed = source_documents(source, desk.register, desk.ledger)
    last = next((run for run in desk.ledger.runs(name, 5) if run.finished_at), None)
    return SourceDocuments(
        source=name,
        run=run_state(name),
        last_run=RunSummary.of(last) if last else None,
        documents=[DocumentStatus.of(doc) for doc in listed],
    )


@router.delete(
    "/v1/sources/{name}/documents/{document:path}", responses={400: {}, 403: {}, 404: {}, 409: {}}
)
def remove_document(
    name: SourceName,
    document: str,
    credential: UploadScope,
    desk: Desk,
    allow_mass_delete: bool = False,
) -> RemovalReceipt:
    """Remove a document from the source's folder; the run it starts removes it from the index.

    `allow_mass_delete` confirms a run that deletes more than the source's max_delete_share."""
    source = desk.source(name, credential)
    try:
        remove(source, document)
    except UploadRejected as exc:
        raise refused(exc) from exc
    desk.register.forget(name, document)
    ticket = trigger_source_run(name, desk.settings, allow_mass_delete)
    return RemovalReceipt(source=name, name=document, run=ticket.outcome)


# -- the page ----------------------------------------------------------------------------------


@page.get("/")
def home() -> RedirectResponse:
    """The page is the service's front door."""
    return RedirectResponse("/ui")


@page.get("/ui")
def ui() -> Response:
    """The upload page (plain HTML, with its script and styles beside it)."""
    return asset("index.html")


@page.get("/ui/{file}")
def asset(file: Literal["index.html", "app.js", "page.css"]) -> Response:
    """One file of the page, from the package's data."""
    content = resources.files("freshkb.api").joinpath("static", file).read_bytes()
    return Response(content, media_type=PAGE_ASSETS[file], headers={"Cache-Control": "no-cache"})
