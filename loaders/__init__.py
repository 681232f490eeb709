"""Loaders: pull documents and customer records from their sources as typed records."""

from __future__ import annotations

from collections.abc import Mapping

from freshkb.core.config import SourceConfig
from freshkb.core.records import SourceKind
from freshkb.loaders.base import Loader, ProgressCallback
from freshkb.loaders.customers import CustomerRecordsLoader
from freshkb.loaders.documents import DocumentFolderLoader

__all__ = [
    "CustomerRecordsLoader",
    "DocumentFolderLoader",
    "Loader",
    "ProgressCallback",
    "loader_for",
]


def loader_for(source: SourceConfig, indexed: Mapping[str, str] | None = None) -> Loader:
    """The loader for a source's kind; `indexed` (document id -> content hash of documents the
    index holds completely) lets the documents loader skip re-parsing unchanged files."""
    if source.kind is SourceKind.DOCUMENTS:
        return DocumentFolderLoader(source, indexed)
    return CustomerRecordsLoader(source)
