"""Who is calling: the ``wf78_authenticate`` hook and the built-in token lookup."""

from __future__ import annotations

import hmac
from typing import Any

from wf78_core.config import AuthConfig, Identity
from wf78_core.http.asgi import Scope, header
from wf78_core.plugin.spec import hookimpl

__all__ = ["TokenAuthenticator", "bearer_token", "effective_priority"]


def bearer_token(scope: Scope) -> str | None:
    """``Authorization: Bearer <token>``, or koa78's ``sid`` header."""
    authorization = header(scope, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    sid = header(scope, b"sid")
    return sid.strip() if sid and sid.strip() else None


class TokenAuthenticator:
    """The built-in ``wf78_authenticate``: bearer tokens from ``[auth.tokens]``, then
    ``[auth.guest]`` when configured. Tokens are compared in constant time, each one."""

    def __init__(self, auth: AuthConfig) -> None:
        self._tokens = [(token.encode(), identity) for token, identity in auth.tokens.items()]
        self._guest = auth.guest

    def lookup(self, token: str | None) -> Identity | None:
        if token is not None:
            given = token.encode()
            found: Identity | None = None
            for known, identity in self._tokens:  # no early exit: timing says nothing
                if hmac.compare_digest(given, known):
                    found = identity
            if found is not None:
                return found
        return self._guest

    @hookimpl(trylast=True)
    def wf78_authenticate(self, scope: Any) -> Identity | None:
        return self.lookup(bearer_token(scope))


def effective_priority(requested: int | None, identity: Identity | None) -> int | None:
    """The priority a request may use: smaller is more urgent, never past the identity's cap."""
    if requested is None:
        return None
    floor = identity.max_priority if identity is not None else None
    if floor is None:
        return requested
    return max(requested, floor)
