"""`freshkb upload`: put documents into a documents source from a shell, as the upload API does,
then run the source's flow (in the background, or here with --wait); `--list` shows them."""

from __future__ import annotations

import getpass
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from freshkb.cli.options import ConfigOption, JsonFlag, settings_for
from freshkb.cli.output import err, fail, print_json, wide_console
from freshkb.core.config import Settings
from freshkb.core.errors import DataError, FreshkbError
from freshkb.core.sources import AnySource, DocumentSourceConfig, get_source

if TYPE_CHECKING:
    from freshkb.loaders.landing import LandedFile
    from freshkb.store.uploads import UploadedDocument

STATE_STYLE = {"ingested": "green", "failed": "red", "pending": "yellow", "validated": "cyan"}
BLOCK = 1 << 20

Files = Annotated[
    list[Path] | None,
    typer.Argument(help="Documents to upload (PDF, DOCX, HTML, Markdown, text, JSON articles)."),
]
WaitFlag = Annotated[
    bool,
    typer.Option("--wait", help="Run the source's flow here and wait for each document's state."),
]
ListFlag = Annotated[bool, typer.Option("--list", help="Show the source's documents and states.")]


def upload(
    source_name: Annotated[str, typer.Argument(metavar="SOURCE", help="A documents source.")],
    files: Files = None,
    wait: WaitFlag = False,
    list_only: ListFlag = False,
    config: ConfigOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Upload documents into a source's folder and run its flow; all land, or none does."""
    try:
        settings = settings_for(config)
        source = get_source(source_name, settings.config_file)
        if not list_only:
            if not files:
                raise DataError("name the files to upload (or --list to see the source's)")
            land_files(settings, source, files)
            _run(settings, source_name, wait)
    except FreshkbError as exc:
        raise fail(exc) from exc
    documents = _documents(settings, source)
    if json_out:
        print_json([doc.to_dict() for doc in documents])
    else:
        wide_console().print(_table(source_name, documents))
    named = {path.name for path in files or []}
    if wait and any(doc.state == "failed" for doc in documents if doc.name in named):
        raise typer.Exit(1)


def land_files(settings: Settings, source: AnySource, files: list[Path]) -> list[LandedFile]:
    """Stage every file (each checked), then commit and register them all."""
    from freshkb.loaders.landing import StagedFile, UploadRejected, stage
    from freshkb.store.uploads import UploadRegister

    staged: list[StagedFile] = []
    register = UploadRegister(settings.ledger_database_url)
    try:
        for path in files:
            staged.append(stage(source, path.name, _read_blocks(path), settings.upload_max_bytes))
        landed = [item.commit() for item in staged]
        for item in landed:
            register.record_upload(
                source.name, item.name, item.content_hash, item.size_bytes, _uploader()
            )
        return landed
    except UploadRejected as exc:
        raise DataError(f"nothing uploaded: {exc}") from exc
    finally:
        for leftover in staged:
            leftover.discard()
        register.close()


def _read_blocks(path: Path) -> Iterator[bytes]:
    """The file's bytes; a symlink, a folder or a missing file is refused, never followed."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError as exc:
        raise DataError(f"nothing uploaded: {path}: no such file") from exc
    if stat.S_ISLNK(mode):
        raise DataError(
            f"nothing uploaded: {path} is a symlink; upload the file it points to "
            f"({path.resolve()}) by its own path"
        )
    if not stat.S_ISREG(mode):
        raise DataError(f"nothing uploaded: {path} is not a regular file")
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            yield block


def _uploader() -> str:
    """Who uploaded from this shell."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _run(settings: Settings, source_name: str, wait: bool) -> None:
    """Run the source's flow here (--wait) or in a process of its own."""
    from freshkb.flows.uploads import run_uploaded_source, start_detached_run
    from freshkb.store import server

    server.ensure_running(settings, announce=err.print)
    if wait:
        run_uploaded_source(source_name, settings)
        return
    pid, log_file = start_detached_run(source_name, settings)
    err.print(
        f"run of {source_name} started in the background (pid {pid}, log {log_file}); "
        f"`freshkb upload {source_name} --list` shows each document's state"
    )


def _documents(settings: Settings, source: AnySource) -> list[UploadedDocument]:
    from freshkb.store.ledger import Ledger
    from freshkb.store.uploads import UploadRegister, source_documents

    if not isinstance(source, DocumentSourceConfig):
        return []
    register = UploadRegister(settings.ledger_database_url)
    ledger = Ledger(settings.ledger_database_url)
    try:
        return source_documents(source, register, ledger)
    finally:
        register.close()
        ledger.close()


def _table(source_name: str, documents: list[UploadedDocument]) -> Table:
    table = Table(title=f"documents of {source_name}", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("document", "state", "pages", "chunks", "uploaded by", "last run"):
        table.add_column(column, no_wrap=True)
    table.add_column("why", overflow="fold", min_width=24)
    for doc in documents:
        style = STATE_STYLE.get(doc.state, "")
        table.add_row(
            doc.name,
            f"[{style}]{doc.state}[/]",
            "-" if doc.pages is None else str(doc.pages),
            "-" if doc.chunks is None else str(doc.chunks),
            doc.uploaded_by or "(in the folder)",
            doc.flow_run_id or "-",
            doc.reason or "",
        )
    if not documents:
        table.add_row("(none)", "", "", "", "", "", "")
    return table
