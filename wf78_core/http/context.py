"""The request-bound client: ``current()`` inside a request wrapped by the middleware."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from wf78_core.config import Identity
from wf78_core.errors import Wf78Error

if TYPE_CHECKING:
    from wf78_core.data.table import Table
    from wf78_core.engine import Engine

__all__ = ["CURRENT_CLIENT", "RequestClient", "current"]


class RequestClient:
    """The engine as seen by one request: the caller's identity and priority.

    Published as ``scope["state"]["wf78"]`` and returned by :func:`current`. For requests
    the app serves, the identity is worked out on first use (``resolve``), so a handler
    that never asks costs nothing.
    """

    __slots__ = ("_identity", "_priority", "_resolve", "engine")

    def __init__(
        self,
        engine: Engine,
        identity: Identity | None = None,
        priority: int | None = None,
        *,
        resolve: Callable[[], tuple[Identity | None, int | None]] | None = None,
    ) -> None:
        self.engine = engine
        self._identity = identity
        self._priority = priority
        self._resolve = resolve

    def _resolved(self) -> None:
        resolve, self._resolve = self._resolve, None
        if resolve is not None:
            self._identity, self._priority = resolve()

    @property
    def identity(self) -> Identity | None:
        if self._resolve is not None:
            self._resolved()
        return self._identity

    @property
    def priority(self) -> int | None:
        if self._resolve is not None:
            self._resolved()
        return self._priority

    def table(self, name: str) -> Table:
        """A configured table scoped to the caller (owner column, priority)."""
        return self.engine.table(name, identity=self.identity, priority=self.priority)

    async def submit(self, op: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("priority", self.priority)
        return await self.engine.submit(op, **kwargs)

    def __repr__(self) -> str:
        who = self.identity.uname or self.identity.uid if self.identity else "anonymous"
        return f"RequestClient({who!r}, priority={self.priority})"


#: The client of the request being handled. The middleware sets and resets it itself (no
#: helper call: it is on the path of every request the app serves).
CURRENT_CLIENT: ContextVar[RequestClient | None] = ContextVar("wf78_current", default=None)


def current() -> RequestClient:
    """The client of the request being handled; an error outside a wrapped request."""
    client = CURRENT_CLIENT.get()
    if client is None:
        raise Wf78Error(
            "wf78.current() is only available inside a request wrapped by Wf78Middleware"
        )
    return client
