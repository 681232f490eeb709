"""Loaders: pull documents and customer records from their sources as typed records."""

from __future__ import annotations

from freshkb.config import SourceConfig
from freshkb.records import SourceKind
from loaders.base import Loader, ProgressCallback
from loaders.customers import CustomerRecordsLoader
from loaders.documents import DocumentFolderLoader

__all__ = [
    "CustomerRecordsLoader",
    "DocumentFolderLoader",
    "Loader",
    "ProgressCallback",
    "loader_for",
]


def loader_for(source: SourceConfig) -> Loader:
    """The loader for a source's kind."""
    if source.kind is SourceKind.DOCUMENTS:
        return DocumentFolderLoader(source)
    return CustomerRecordsLoader(source)
