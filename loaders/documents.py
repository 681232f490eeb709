"""Policy documents from a folder: PDF, DOCX, HTML, Markdown, text and JSON knowledge articles.

Each file is checked before it is parsed (empty, wrong magic bytes, truncated, binary, not
UTF-8), then partitioned with `unstructured`. A file that fails becomes one LoadFailure with a
reason that names the fix; the rest of the folder loads. PDF and DOCX files that need parsing go
to a pool of `processes` workers (pdfminer is pure Python: one core per file) while the ingest
process parses the text files.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from freshkb.core import ids
from freshkb.core.errors import DataError, UnsupportedFileType
from freshkb.core.records import LoadedDocument, LoadResult, Section, SourceKind
from freshkb.core.sources import DocumentSourceConfig
from freshkb.loaders.base import (
    PooledFiles,
    ProgressCallback,
    check_folder,
    load_each_file,
    modified_time,
)
from freshkb.loaders.nlp_model import install_offline_spacy_model

TEXT_FORMATS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
    ".json": "json",
}
BINARY_FORMATS = {".pdf": "pdf", ".docx": "docx"}
SUPPORTED = ", ".join(sorted({*TEXT_FORMATS, *BINARY_FORMATS}))
ARTICLE_KEYS = ("id", "title", "content")


class DocumentFolderLoader:
    """Loads every supported file of a folder (recursively) as one document each."""

    def __init__(
        self,
        source: DocumentSourceConfig,
        indexed: Mapping[str, str] | None = None,
        processes: int = 1,
    ):
        self.source = source
        self.processes = processes
        # document id -> content hash of the documents the index holds completely. A file whose
        # bytes still hash the same is not partitioned again: the sync plan will leave it as
        # it is, so its text would only be thrown away (PDFs are most of an unchanged run).
        self.indexed = dict(indexed or {})

    def precheck(self) -> None:
        """The folder must exist."""
        check_folder(self.source)

    def load(self, progress: ProgressCallback | None = None) -> LoadResult:
        """Partition every included file; failures are collected, never raised."""
        pooled = PooledFiles(
            wants=self._needs_partition,
            # a loader without `indexed` goes to the workers: each job ships it
            load_file=DocumentFolderLoader(self.source).load_one,
            processes=self.processes,
        )
        return load_each_file(self.source, self.load_one, progress, pooled)

    def load_one(self, path: Path, relative: str) -> LoadResult:
        """One file's documents (raises DataError or UnsupportedFileType for a bad one)."""
        return LoadResult(tuple(self._load_file(path, relative)))

    def _needs_partition(self, path: Path, relative: str) -> bool:
        """A PDF or DOCX file that is not indexed as it is now (worth a worker process)."""
        if path.suffix.lower() not in BINARY_FORMATS:
            return False
        indexed = self.indexed.get(ids.document_id(self.source.name, relative))
        try:
            return indexed is None or indexed != ids.content_hash(path.read_bytes())
        except OSError:
            return False  # reported by the ingest process's own read, with the fix

    def _load_file(self, path: Path, relative: str) -> list[LoadedDocument]:
        suffix = path.suffix.lower()
        if suffix not in TEXT_FORMATS and suffix not in BINARY_FORMATS:
            raise UnsupportedFileType(
                f"unsupported file type {suffix or '(none)'!r}, skipped; supported: {SUPPORTED} "
                "(narrow the source's `include` globs to leave it out of the report)"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"unreadable ({exc.strerror}); check its permissions") from exc
        if not data:
            raise DataError("empty file (0 bytes); remove it or upload the full document")
        content_hash = ids.content_hash(data)
        if self.indexed.get(ids.document_id(self.source.name, relative)) == content_hash:
            return [self._reused(relative, path, len(data), content_hash)]
        if suffix in BINARY_FORMATS:
            sections = _partition_binary(BINARY_FORMATS[suffix], path, data, self.source)
            return [self._document(relative, path, data, sections, {"file_type": suffix[1:]})]
        text = _decode_text(data, suffix)
        if suffix == ".json":
            return self._articles(relative, path, data, text)
        sections = _partition_text(TEXT_FORMATS[suffix], text)
        return [self._document(relative, path, data, sections, {"file_type": suffix[1:]})]

    def _document(
        self,
        key: str,
        path: Path,
        data: bytes,
        sections: list[Section],
        metadata: dict[str, Any],
        title: str | None = None,
    ) -> LoadedDocument:
        if not sections:
            hint = " (a scanned PDF? try pdf_strategy: hi_res)" if path.suffix == ".pdf" else ""
            raise DataError(f"no text could be extracted{hint}")
        pages = [s.page for s in sections if s.page is not None]
        first_title = next((s.text for s in sections if s.category == "Title"), None)
        return LoadedDocument(
            source=self.source.name,
            kind=SourceKind.DOCUMENTS,
            document_id=ids.document_id(self.source.name, key),
            key=key,
            title=(title or document_title(path, first_title))[:300],
            content_hash=ids.content_hash(data),
            modified_at=modified_time(path),
            sections=tuple(sections),
            metadata={
                **metadata,
                "size_bytes": len(data),
                **({"page_count": max(pages)} if pages else {}),
            },
        )

    def _reused(self, key: str, path: Path, size: int, content_hash: str) -> LoadedDocument:
        """An unchanged, completely indexed file, not parsed again (no sections)."""
        return LoadedDocument(
            source=self.source.name,
            kind=SourceKind.DOCUMENTS,
            document_id=ids.document_id(self.source.name, key),
            key=key,
            title=document_title(path, None)[:300],
            content_hash=content_hash,
            modified_at=modified_time(path),
            sections=(),
            metadata={
                "file_type": path.suffix.lower()[1:],
                "size_bytes": size,
                "reused": True,
            },
        )

    def _articles(self, relative: str, path: Path, data: bytes, text: str) -> list[LoadedDocument]:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from exc
        articles = parsed if isinstance(parsed, list) else [parsed]
        if not articles or not all(
            isinstance(a, dict) and all(k in a for k in ARTICLE_KEYS) for a in articles
        ):
            raise DataError(
                "not a knowledge article: expected an object (or an array of objects) with keys "
                f"{', '.join(ARTICLE_KEYS)}"
            )
        documents = []
        for article in articles:
            content = str(article["content"] or "").strip()
            body = _partition_text("markdown", content) if content else []
            key = relative if len(articles) == 1 else ids.article_key(relative, str(article["id"]))
            raw = data if len(articles) == 1 else json.dumps(article, sort_keys=True).encode()
            documents.append(
                self._document(
                    key,
                    path,
                    raw,
                    body,
                    {"file_type": "json", "article_id": str(article["id"])},
                    title=str(article["title"]),
                )
            )
        return documents


def document_title(path: Path, heading: str | None) -> str:
    """A document's title: its file's name in words, and its first heading when that says
    something the name does not ("Northwind Standard Benefits Details: Contoso Electronics").

    The name is often what tells two documents apart (two plans' brochures both open with the
    company's name), and a title is searched with the text and embedded in front of each chunk.
    """
    name = re.sub(r"[\s_\-.]+", " ", path.stem).strip() or path.name
    if not heading:
        return name
    if _words(name) in _words(heading):
        return heading
    if _words(heading) in _words(name):
        return name
    return f"{name}: {heading}"


def _words(text: str) -> str:
    """Lowercase words with a space either side, to test whole-word containment."""
    return f" {' '.join(re.findall(r'[a-z0-9]+', text.lower()))} "


def _decode_text(data: bytes, suffix: str) -> str:
    if b"\x00" in data[:8192]:
        raise DataError(f"binary content in a {suffix} file; check the file type")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 at byte {exc.start}; save the file as UTF-8") from exc


def _check_pdf(data: bytes) -> None:
    if not data.startswith(b"%PDF-"):
        raise DataError(f"not a PDF (first bytes {data[:4]!r}); check the file type")
    if b"%%EOF" not in data[-2048:]:
        raise DataError("truncated PDF (no end-of-file marker); upload the complete file")


def _partition_binary(
    fmt: str, path: Path, data: bytes, source: DocumentSourceConfig
) -> list[Section]:
    install_offline_spacy_model()  # here, not per run: unchanged files never import spaCy
    if fmt == "pdf":
        _check_pdf(data)
        from unstructured.partition.pdf import partition_pdf

        elements = partition_pdf(
            file=io.BytesIO(data), strategy=source.pdf_strategy, languages=["eng"]
        )
    else:
        if not data.startswith(b"PK\x03\x04"):
            raise DataError(f"not a DOCX (first bytes {data[:4]!r}; a DOCX is a ZIP archive)")
        from unstructured.partition.docx import partition_docx

        elements = partition_docx(file=io.BytesIO(data))
    return sections_from_elements(elements)


def _partition_text(fmt: str, text: str) -> list[Section]:
    install_offline_spacy_model()
    if fmt == "markdown":
        from unstructured.partition.md import partition_md

        elements = partition_md(text=text)
    elif fmt == "html":
        from unstructured.partition.html import partition_html

        elements = partition_html(text=text)
    else:
        from unstructured.partition.text import partition_text

        elements = partition_text(text=text)
    return sections_from_elements(elements)


def sections_from_elements(elements: Sequence[Any]) -> list[Section]:
    """Sections from unstructured elements, each knowing the title it sits under."""
    sections: list[Section] = []
    current_title: str | None = None
    for element in elements:
        text = (element.text or "").strip()
        if not text or element.category in {"PageBreak", "Header", "Footer"}:
            continue
        if element.category == "Title":
            current_title = text
        sections.append(
            Section(
                text=text,
                category=element.category,
                page=element.metadata.page_number,
                title=current_title,
            )
        )
    return sections
