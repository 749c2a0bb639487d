"""Who is calling: the ``wf78_authenticate`` hook chain, and the priority a caller may use.

The chain is the only way a request gets an identity: authentication plugins first, the
default token plugin (:class:`wf78_core.core.auth.TokenAuth`, ``trylast``) last. A token
sent outside the headers (koa78's ``sid`` parameter) is put to the same chain as the
request's bearer token.
"""

from __future__ import annotations

import pluggy

from wf78_core.config import Identity
from wf78_core.http.asgi import Scope, header, parse_priority
from wf78_core.plugin.manager import HookChain

__all__ = ["Callers", "allowed_priority", "effective_priority"]

_TOKEN_HEADERS = (b"authorization", b"sid")


class Callers:
    """``Callers(pm)``: the identities of requests, from ``pm``'s
    ``wf78_authenticate`` implementations in call order.

    ``lazy`` is true when every implementation declares ``wf78_authenticate_lazily`` (it is
    synchronous and reads only the headers): the app's own requests then ask the chain only
    when a handler first wants the identity (:meth:`identify_now`).
    """

    __slots__ = ("_chain", "lazy")

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._chain = HookChain(pm, "wf78_authenticate")
        self.lazy = all(
            getattr(impl.plugin, "wf78_authenticate_lazily", False) is True
            for impl in pm.hook.wf78_authenticate.get_hookimpls()
        )

    async def identify(self, scope: Scope) -> Identity | None:
        """The first identity the chain gives for ``scope``, or None."""
        identity: Identity | None = await self._chain.first(scope=scope)
        return identity

    def identify_now(self, scope: Scope) -> Identity | None:
        """:meth:`identify` without awaiting: only when :attr:`lazy` (every implementation
        is synchronous)."""
        for _, function, argnames in self._chain.impls:
            identity: Identity | None = function(scope=scope) if argnames else function()
            if identity is not None:
                return identity
        return None

    async def identify_token(self, scope: Scope, token: str) -> Identity | None:
        """The identity of ``token`` given outside the headers: the chain is asked as if
        the request had sent it as ``Authorization: Bearer`` (and no other token)."""
        try:
            value = token.encode("latin-1")  # what a header's latin-1 decoding gives back
        except UnicodeEncodeError:  # no header can carry it: it names no identity
            value = token.encode()
        headers = [(b"authorization", b"Bearer " + value)]
        headers += [item for item in scope.get("headers", ()) if item[0] not in _TOKEN_HEADERS]
        return await self.identify({**scope, "headers": headers})


def allowed_priority(scope: Scope, identity: Identity | None) -> int | None:
    """The request's ``X-Wf78-Priority``, capped by ``identity``; None without one (or with
    a bad one: the data routes report it, the app's own routes ignore it)."""
    requested = header(scope, b"x-wf78-priority")
    priority = None if requested is None else parse_priority(requested)
    return effective_priority(priority, identity)


def effective_priority(requested: int | None, identity: Identity | None) -> int | None:
    """The priority a request may use: smaller is more urgent, never past the identity's cap."""
    if requested is None:
        return None
    floor = identity.max_priority if identity is not None else None
    if floor is None:
        return requested
    return max(requested, floor)
