"""Token authentication, the default ``wf78_authenticate`` plugin.

It is registered like the built-in actions and marked ``trylast``, so an authentication
plugin runs before it (and wins by answering) or replaces it when it is not registered:
the HTTP layer only ever calls the ``wf78_authenticate`` hook chain.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from wf78_core.config import AuthConfig, Identity
from wf78_core.plugin.spec import hookimpl
from wf78_core.plugin.types import Scope

__all__ = ["TokenAuth", "bearer_token"]


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def bearer_token(scope: Mapping[str, Any]) -> str | None:
    """``Authorization: Bearer <token>``, or koa78's ``sid`` header."""
    authorization = _header(scope, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    sid = _header(scope, b"sid")
    return sid.strip() if sid and sid.strip() else None


class TokenAuth:
    """``TokenAuth(config.auth)``: bearer tokens from ``[auth.tokens]``, then
    ``[auth.guest]`` when configured. Tokens are compared in constant time, each one."""

    #: Its hook is synchronous and reads only ``scope["headers"]``: the middleware may run
    #: it when a handler first asks for the identity instead of on every request. Any
    #: authenticator may say the same; one that does not makes every request ask at once.
    wf78_authenticate_lazily = True

    def __init__(self, auth: AuthConfig) -> None:
        self._tokens = [(token.encode(), identity) for token, identity in auth.tokens.items()]
        self._guest = auth.guest

    def lookup(self, token: str | None) -> Identity | None:
        """The identity of ``token``; the guest (or None) when it is none of them."""
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
    def wf78_authenticate(self, scope: Scope) -> Identity | None:
        return self.lookup(bearer_token(scope))
