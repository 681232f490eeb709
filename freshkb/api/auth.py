"""Bearer tokens and their scopes: `answer` (ask, search, read the ledger, give feedback) and
`admin` (also list and resolve escalations)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from freshkb.api.state import api_state

Scope = Literal["answer", "admin"]

# auto_error off: a missing token gets freshkb's own 401 message, which says how to send one.
bearer = HTTPBearer(auto_error=False)


def granted_scope(tokens: Mapping[str, Scope], presented: str) -> Scope | None:
    """The scope of a presented token, or None if it is unknown (compared in constant time)."""
    return next(
        (
            scope
            for token, scope in tokens.items()
            if hmac.compare_digest(token.encode(), presented.encode())
        ),
        None,
    )


def require(scope: Scope) -> Callable[..., Scope]:
    """A dependency admitting requests whose bearer token grants `scope` (admin grants both)."""

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Scope:
        if credentials is None:
            raise HTTPException(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        granted = granted_scope(api_state(request).tokens, credentials.credentials)
        if granted is None:
            raise HTTPException(401, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
        if scope == "admin" and granted != "admin":
            raise HTTPException(403, "this endpoint needs a token with the 'admin' scope")
        return granted

    return check


AnswerScope = Annotated[Scope, Depends(require("answer"))]
AdminScope = Annotated[Scope, Depends(require("admin"))]
