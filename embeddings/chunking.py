"""Chunk loaded documents by title, sized for the embedding model's window.

Uses unstructured's `chunk_by_title`: a new chunk starts at every title and at every page
break (so each chunk cites exactly one page), and long sections are split with a small overlap.
Every chunk keeps its page, its section title and the document's identity and content hash,
and the first chunk of a policy document the names the document uses (core/document_names.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from unstructured.chunking.title import chunk_by_title
from unstructured.documents.elements import (
    TYPE_TO_TEXT_ELEMENT_MAP,
    ElementMetadata,
    NarrativeText,
    Text,
)

from freshkb.core import document_names, ids
from freshkb.core.records import Chunk, LoadedDocument, Section, SourceKind

# Characters per token of English prose for WordPiece/BPE tokenizers, rounded down so a full
# chunk stays inside the model window instead of being silently truncated by the encoder.
CHARS_PER_TOKEN = 3.5


@dataclass(frozen=True)
class ChunkingPolicy:
    """Chunk sizes, in characters."""

    max_characters: int
    new_after_n_chars: int
    combine_text_under_n_chars: int
    overlap: int

    @classmethod
    def for_window(cls, max_tokens: int, override_chars: int = 0) -> ChunkingPolicy:
        """Sizes for a model reading at most `max_tokens`, or `override_chars` if set."""
        max_chars = override_chars or int(max_tokens * CHARS_PER_TOKEN)
        max_chars = max(200, max_chars)
        return cls(
            max_characters=max_chars,
            new_after_n_chars=int(max_chars * 0.8),
            combine_text_under_n_chars=int(max_chars * 0.25),
            overlap=max_chars // 8,
        )


def _to_element(index: int, section: Section) -> Text:
    """Rebuild an unstructured element from a Section, its index kept as the element id."""
    element_class = TYPE_TO_TEXT_ELEMENT_MAP.get(section.category, NarrativeText)
    element = element_class(
        text=section.text,
        element_id=str(index),
        metadata=ElementMetadata(page_number=section.page),
    )
    return element


def embedding_text(title: str, section_title: str | None, text: str) -> str:
    """The text that is embedded: the chunk with its document and section titles in front.

    Titles give a short chunk the context a reader has, which improves retrieval of chunks like
    "Within 60 days" that only make sense under their heading.
    """
    header = [title] if title and title not in text[: len(title) + 50] else []
    if section_title and section_title != title and section_title not in text[:200]:
        header.append(section_title)
    return "\n".join([*header, text]) if header else text


def _record_pieces(sections: tuple[Section, ...], max_chars: int) -> list[tuple[str, Section]]:
    """Customer records keep their line layout (nested fields are indented lines), so they are
    packed line by line instead of by unstructured, which joins lines into prose."""
    pieces: list[tuple[str, Section]] = []
    for section in sections:
        lines: list[str] = []
        size = 0
        for line in section.text.splitlines():
            if lines and size + len(line) + 1 > max_chars:
                pieces.append(("\n".join(lines), section))
                lines, size = [], 0
            lines.append(line[:max_chars])
            size += len(line) + 1
        if lines:
            pieces.append(("\n".join(lines), section))
    return pieces


def chunk_document(document: LoadedDocument, policy: ChunkingPolicy) -> list[Chunk]:
    """Split one document into chunks; positions run 0..n-1 in reading order."""
    sections = document.sections
    if not sections:
        return []
    if document.kind is SourceKind.CUSTOMERS:
        return _chunks(document, _record_pieces(sections, policy.max_characters))
    elements = [_to_element(index, section) for index, section in enumerate(sections)]
    composites = chunk_by_title(
        elements,
        max_characters=policy.max_characters,
        new_after_n_chars=policy.new_after_n_chars,
        combine_text_under_n_chars=policy.combine_text_under_n_chars,
        overlap=policy.overlap,
        multipage_sections=False,
        include_orig_elements=True,
    )
    texts: list[tuple[str, Section]] = []
    for composite in composites:
        text = composite.text.strip()
        if not text:
            continue
        originals = composite.metadata.orig_elements or []
        first = sections[int(originals[0].id)] if originals else sections[0]
        texts.append((text, first))
    return _chunks(document, texts)


def _chunks(document: LoadedDocument, texts: list[tuple[str, Section]]) -> list[Chunk]:
    count = len(texts)
    names = ""  # on the first chunk only; a record stands alone: no document to name
    if document.kind is SourceKind.DOCUMENTS and texts:
        names = document_names.encode([document.title, *(s.text for s in document.sections)])
    chunks = []
    for position, (text, first) in enumerate(texts):
        section_title = first.title if first.category != "Title" else first.text
        chunks.append(
            Chunk(
                uuid=ids.chunk_uuid(document.document_id, position),
                document_id=document.document_id,
                position=position,
                chunk_count=count,
                text=text,
                chunk_hash=ids.content_hash(embedding_text(document.title, section_title, text)),
                source=document.source,
                kind=document.kind,
                key=document.key,
                title=document.title,
                section_title=section_title,
                page=first.page,
                content_hash=document.content_hash,
                modified_at=document.modified_at,
                customer_id=document.customer_id,
                document_names=names if position == 0 else "",
            )
        )
    return chunks


def chunk_documents(documents: Iterable[LoadedDocument], policy: ChunkingPolicy) -> list[Chunk]:
    """Chunk a batch of documents."""
    return [chunk for document in documents for chunk in chunk_document(document, policy)]
