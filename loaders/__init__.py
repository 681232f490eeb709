"""Loaders: pull documents and customer records from their sources as typed records."""

from __future__ import annotations

from collections.abc import Mapping

from freshkb.core.sources import (
    AnySource,
    CustomerFilesSourceConfig,
    CustomerSqlSourceConfig,
    DocumentSourceConfig,
)
from freshkb.loaders.base import Loader, ProgressCallback
from freshkb.loaders.customers import CustomerFilesLoader, CustomerSqlLoader
from freshkb.loaders.documents import DocumentFolderLoader

__all__ = [
    "CustomerFilesLoader",
    "CustomerSqlLoader",
    "DocumentFolderLoader",
    "Loader",
    "ProgressCallback",
    "loader_for",
]


def loader_for(
    source: AnySource, indexed: Mapping[str, str] | None = None, processes: int = 1
) -> Loader:
    """The loader for a source's kind; `indexed` (document id -> content hash of documents the
    index holds completely) lets the documents loader skip re-parsing unchanged files, and
    `processes` partition its PDF and DOCX files."""
    if isinstance(source, DocumentSourceConfig):
        return DocumentFolderLoader(source, indexed, processes)
    if isinstance(source, CustomerSqlSourceConfig):
        return CustomerSqlLoader(source)
    if isinstance(source, CustomerFilesSourceConfig):
        return CustomerFilesLoader(source)
    raise TypeError(f"no loader for {type(source).__name__}")
