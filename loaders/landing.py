"""The landing folder of a documents source: where an uploaded file is put so the source's next
run picks it up.

An upload is staged first: its bytes go to a hidden temporary file in the same folder (the
loader skips hidden files, so a half-written upload is never ingested), counted against the
size limit as they arrive, then checked by content: the name's type must be what the bytes are
(a PDF starts with %PDF- and ends with %%EOF, a DOCX is a ZIP holding word/document.xml, text
is UTF-8 without NULs, JSON is a knowledge article). Only then is it committed with one
`os.replace`, so of two uploads of one name at once the last complete one wins and no reader
ever sees a torn file. Names are file names only: no folders, no `..`, no absolute paths, no
hidden files, and an existing symlink or folder of that name is never replaced or followed.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

from freshkb.core import ids
from freshkb.core.errors import DataError
from freshkb.core.sources import AnySource, DocumentSourceConfig, SourceConfig
from freshkb.loaders.documents import ARTICLE_KEYS, BINARY_FORMATS, TEXT_FORMATS

Problem = Literal["name", "source", "empty", "too_large", "type", "conflict", "missing"]
UPLOAD_FORMATS = {**TEXT_FORMATS, **BINARY_FORMATS}
ACCEPTED = sorted(UPLOAD_FORMATS)
MAX_NAME_BYTES = 255
READ_BLOCK = 1 << 20
# What an upload's first bytes most often turn out to be, to say so in the refusal.
KNOWN_CONTENT = {
    b"MZ": "a Windows executable",
    b"\x7fELF": "a Linux executable",
    b"PK\x03\x04": "a ZIP archive",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF-": "a PDF",
}


class UploadRejected(DataError):
    """An upload refused before anything changed, with the kind of problem it has."""

    def __init__(self, problem: Problem, message: str):
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class LandedFile:
    """A file committed to a source's landing folder."""

    source: str
    name: str
    size_bytes: int
    content_hash: str  # as the loader hashes it: the document's content hash
    file_format: str  # pdf | docx | html | markdown | text | json


def landing_folder(source: AnySource) -> Path:
    """The folder uploads of `source` land in (created if missing); refuses other sources."""
    if not isinstance(source, DocumentSourceConfig):
        raise UploadRejected(
            "source",
            f"source {source.name!r} holds customer records; uploads take documents, into a "
            "source of kind documents",
        )
    folder = Path(source.location)
    if folder.is_file():
        raise UploadRejected(
            "source", f"source {source.name!r} reads the one file {folder}; uploads need a folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def safe_name(source: SourceConfig, name: str) -> str:
    """`name` when it is a plain file name the source reads; UploadRejected saying why not."""
    name = unicodedata.normalize("NFC", name)
    shown = repr(name[:80])
    if not name or name in (".", ".."):
        raise UploadRejected("name", f"file name {shown}: give the document's file name")
    if "/" in name or "\\" in name or Path(name).is_absolute():
        raise UploadRejected(
            "name", f"file name {shown}: a file name only, without folders, '..' or a leading '/'"
        )
    if name.startswith(".") or any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        raise UploadRejected(
            "name", f"file name {shown}: no leading '.' (hidden) and no control characters"
        )
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UploadRejected("name", f"file name {shown}...: over {MAX_NAME_BYTES} bytes")
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_FORMATS:
        raise UploadRejected(
            "type", f"{name}: type {suffix or '(none)'!r} is not taken; use {', '.join(ACCEPTED)}"
        )
    include = getattr(source, "include", ["**/*"])
    if not any(fnmatch(name, p) or (p.startswith("**/") and fnmatch(name, p[3:])) for p in include):
        raise UploadRejected(
            "name", f"{name}: source {source.name!r} only reads files matching {include}"
        )
    return name


class StagedFile:
    """An upload written to a hidden temporary file in the landing folder and checked; commit()
    puts it in place atomically, discard() removes it."""

    def __init__(self, folder: Path, temp: Path, landed: LandedFile):
        self.folder, self.temp, self.landed = folder, temp, landed

    def commit(self) -> LandedFile:
        """Replace (or create) the named file with this upload in one atomic rename."""
        _refuse_link_or_folder(self.folder / self.landed.name, self.landed.name)
        os.replace(self.temp, self.folder / self.landed.name)
        return self.landed

    def discard(self) -> None:
        """Remove the temporary file (the landing folder is as it was)."""
        self.temp.unlink(missing_ok=True)


def stage(source: AnySource, name: str, blocks: Iterable[bytes], max_bytes: int) -> StagedFile:
    """Write an upload beside its final place and check it; UploadRejected leaves no trace."""
    folder = landing_folder(source)
    name = safe_name(source, name)
    _refuse_link_or_folder(folder / name, name)
    handle, temp_name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=folder)
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            size = _copy_limited(blocks, out, name, max_bytes)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise UploadRejected("empty", f"{name}: empty file (0 bytes); upload the document")
        fmt = UPLOAD_FORMATS[Path(name).suffix.lower()]
        check_content(temp, name, fmt)
        content_hash = ids.content_hash(temp.read_bytes())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return StagedFile(folder, temp, LandedFile(source.name, name, size, content_hash, fmt))


def _copy_limited(blocks: Iterable[bytes], out: object, name: str, max_bytes: int) -> int:
    size = 0
    for block in blocks:
        size += len(block)
        if size > max_bytes:
            raise UploadRejected(
                "too_large",
                f"{name}: over the upload limit of {max_bytes} bytes (upload_max_bytes); "
                "split the document or ask for a higher limit",
            )
        out.write(block)  # type: ignore[attr-defined]
    return size


def _refuse_link_or_folder(target: Path, name: str) -> None:
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise UploadRejected(
            "conflict", f"{name}: a symlink of that name is in the landing folder; not replaced"
        )
    if not stat.S_ISREG(mode):
        raise UploadRejected("conflict", f"{name}: a folder of that name is in the landing folder")


def check_content(path: Path, name: str, fmt: str) -> None:
    """The bytes at `path` are a `fmt` file (by content, not by name); UploadRejected if not."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if fmt == "pdf":
        _check_pdf(path, name, head)
    elif fmt == "docx":
        _check_docx(path, name, head)
    else:
        text = _check_text(path, name, head)
        if fmt == "json":
            _check_articles(name, text)


def _not_a(name: str, wanted: str, head: bytes) -> UploadRejected:
    found = next((what for magic, what in KNOWN_CONTENT.items() if head.startswith(magic)), None)
    seen = found or f"first bytes {head[:4]!r}"
    return UploadRejected("type", f"{name}: not {wanted} (its content is {seen}); check the file")


def _check_pdf(path: Path, name: str, head: bytes) -> None:
    if not head.startswith(b"%PDF-"):
        raise _not_a(name, "a PDF", head)
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 2048))
        if b"%%EOF" not in handle.read():
            raise UploadRejected(
                "type", f"{name}: truncated PDF (no end-of-file marker); upload the whole file"
            )


def _check_docx(path: Path, name: str, head: bytes) -> None:
    if not head.startswith(b"PK\x03\x04"):
        raise _not_a(name, "a DOCX (a ZIP archive)", head)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as exc:
        raise UploadRejected("type", f"{name}: a damaged ZIP archive, not a DOCX ({exc})") from exc
    if "word/document.xml" not in names:
        raise UploadRejected(
            "type", f"{name}: a ZIP archive but not a Word document (no word/document.xml)"
        )


def _check_text(path: Path, name: str, head: bytes) -> str:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    parts: list[str] = []
    offset = 0
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK):
            if b"\x00" in block:
                raise _not_a(name, "text (it holds NUL bytes)", head)
            try:
                parts.append(decoder.decode(block))
            except UnicodeDecodeError as exc:
                raise UploadRejected(
                    "type", f"{name}: invalid UTF-8 at byte {offset + exc.start}; save it as UTF-8"
                ) from exc
            offset += len(block)
    try:
        parts.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError as exc:
        raise UploadRejected("type", f"{name}: ends inside a UTF-8 character") from exc
    return "".join(parts)


def _check_articles(name: str, text: str) -> None:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UploadRejected(
            "type", f"{name}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    articles = parsed if isinstance(parsed, list) else [parsed]
    if not articles or not all(
        isinstance(a, dict) and all(k in a for k in ARTICLE_KEYS) for a in articles
    ):
        raise UploadRejected(
            "type",
            f"{name}: not a knowledge article: expected an object (or an array of objects) "
            f"with keys {', '.join(ARTICLE_KEYS)}",
        )


def remove(source: AnySource, name: str) -> Path:
    """Delete the named document from the landing folder (a symlink is removed, not followed)."""
    folder = landing_folder(source)
    name = safe_name(source, name)
    target = folder / name
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError as exc:
        raise UploadRejected("missing", f"{name}: no such document in {source.name!r}") from exc
    if stat.S_ISDIR(mode):
        raise UploadRejected("conflict", f"{name}: a folder, not a document; not removed")
    target.unlink()
    return target
