"""Bearer tokens and what they may do.

A token carries one scope: `answer` (a service such as a support front end: ask, search, read
the ledger, give feedback, acting for whichever customer it names), `customer:<id>` (the same,
but only ever for that one customer: a customer's identity comes from the credential, never
from the request body), `upload` (a knowledge owner: put documents into documents sources and
watch them, and ask general questions, for no customer) or `upload:<source>,<source>` (the same,
into those sources only), or `admin` (everything, escalations and uploads included).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from freshkb.api.state import api_state
from freshkb.core.config import TOKEN_CUSTOMER, TOKEN_UPLOAD

Scope = Literal["answer", "admin", "upload"]

# auto_error off: a missing token gets freshkb's own 401 message, which says how to send one.
bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True)
class Credential:
    """Who is calling: the token's scope, its customer if it has one, and a fingerprint that
    names the token in records without revealing it."""

    scope: str  # answer | admin | customer | upload
    customer_id: str | None
    fingerprint: str
    sources: frozenset[str] | None = None  # upload: the sources it may write; None: all

    def acting_for(self, requested: str | None) -> str | None:
        """The customer this request acts for; 403 when a customer token names another."""
        if self.scope == "upload" and requested is not None:
            raise HTTPException(
                403, "an upload token asks general questions only; leave customer_id out"
            )
        if self.customer_id is None:
            return requested
        if requested is not None and requested != self.customer_id:
            raise HTTPException(
                403,
                "this token acts for one customer only; customer_id must be left out or be "
                "that customer",
            )
        return self.customer_id

    def may_upload_to(self, source: str) -> None:
        """403 unless this token may change the documents of `source`."""
        if self.sources is not None and source not in self.sources:
            allowed = ", ".join(sorted(self.sources))
            raise HTTPException(
                403, f"this token uploads to {allowed} only, not to source {source!r}"
            )

    @property
    def name(self) -> str:
        """How records name who acted: the scope and the token's fingerprint."""
        return f"{self.scope}:{self.fingerprint}"


def credential_for(tokens: Mapping[str, str], presented: str) -> Credential | None:
    """The credential of a presented token, or None if it is unknown (constant-time compare)."""
    granted = next(
        (
            scope
            for token, scope in tokens.items()
            if hmac.compare_digest(token.encode(), presented.encode())
        ),
        None,
    )
    if granted is None:
        return None
    fingerprint = hashlib.sha256(presented.encode()).hexdigest()[:16]
    customer = TOKEN_CUSTOMER.match(granted)
    if customer:
        return Credential("customer", customer["customer_id"], fingerprint)
    upload = TOKEN_UPLOAD.match(granted)
    if upload:
        listed = upload["sources"]
        sources = frozenset(listed.split(",")) if listed else None
        return Credential("upload", None, fingerprint, sources)
    return Credential(granted, None, fingerprint)


def require(scope: Scope) -> Callable[..., Credential]:
    """A dependency admitting requests whose token grants `scope` (admin grants every scope;
    every token may ask, an upload token for no customer)."""

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Credential:
        if credentials is None:
            raise HTTPException(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        granted = credential_for(api_state(request).tokens, credentials.credentials)
        if granted is None:
            raise HTTPException(401, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
        if scope in ("admin", "upload") and granted.scope not in (scope, "admin"):
            raise HTTPException(403, f"this endpoint needs a token with the {scope!r} scope")
        return granted

    return check


AnswerScope = Annotated[Credential, Depends(require("answer"))]
AdminScope = Annotated[Credential, Depends(require("admin"))]
UploadScope = Annotated[Credential, Depends(require("upload"))]
