"""Every identifier freshkb mints, in one place.

Identity is not content: a document's id comes from where it lives (source + key) and never
changes across edits; its content hash says whether it changed. A chunk's Weaviate UUID is
derived from the document id and the chunk's position, so a retried write lands on the same
objects instead of creating duplicates.
"""

from __future__ import annotations

import hashlib
import re
import uuid

# Fixed namespace for all freshkb uuid5 values; changing it would orphan every stored object.
FRESHKB_NAMESPACE = uuid.UUID("6f0c3c1e-2d0b-5c4e-9a51-3f3a1b7d9e20")

_TENANT_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def document_id(source: str, key: str) -> str:
    """Stable id of a document: uuid5 of its source name and its key (path or primary key)."""
    return str(uuid.uuid5(FRESHKB_NAMESPACE, f"doc\x00{source}\x00{key}"))


def record_key(file: str, primary_key: str) -> str:
    """Key of a record: the file (or table) it is in, and its primary key."""
    return f"{file}:{primary_key}"


def article_key(file: str, article_id: str) -> str:
    """Key of one article of a JSON file that holds several."""
    return f"{file}#{article_id}"


def comes_from(key: str, file: str) -> bool:
    """True when a document key was minted from `file`: the file itself, or a record or an
    article in it."""
    return key == file or key.startswith((f"{file}:", f"{file}#"))


def chunk_uuid(doc_id: str, position: int) -> str:
    """Weaviate object UUID of the chunk at `position` within a document."""
    return str(uuid.uuid5(FRESHKB_NAMESPACE, f"chunk\x00{doc_id}\x00{position}"))


def content_hash(*parts: str | bytes) -> str:
    """SHA-256 hex digest over the given parts, separated so ("ab","c") != ("a","bc")."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def tenant_name(customer_id: str) -> str:
    """Weaviate tenant name for a customer id.

    Tenant names allow only [A-Za-z0-9_-], at most 64 characters. Ids that already fit are
    used as they are (readable in Weaviate's tooling); others get a safe prefix plus a hash, so
    two different ids can never share a tenant.
    """
    if _TENANT_SAFE.match(customer_id):
        return customer_id
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", customer_id)[:40]
    return f"{safe}-{hashlib.sha256(customer_id.encode('utf-8')).hexdigest()[:16]}"


def text_half(text: str) -> str:
    """ "A" or "B", by the parity of the first byte of the text's SHA-256: the stable split of
    evaluation cases and exemplars into a half to tune on and a half held out."""
    return "AB"[hashlib.sha256(text.encode("utf-8")).digest()[0] % 2]
