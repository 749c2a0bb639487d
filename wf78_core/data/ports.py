"""What the data layer needs of the engine above it, as protocols.

The data layer sits below the engine (the composition root) and never imports it: the
engine satisfies :class:`EnginePort` structurally when it hands itself to a
:class:`~wf78_core.data.table.Table`, a :class:`~wf78_core.data.mirrors.Relay` or
:func:`~wf78_core.data.sharding.maintain`. Members are read-only properties, so an engine
holding a subtype (its own relay, a richer pool) still fits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from wf78_core.config import Config, EngineSettings
from wf78_core.core.admission import Admission
from wf78_core.core.limits import Limiter
from wf78_core.core.ports import Backend
from wf78_core.core.sources import SourcePool
from wf78_core.data.outbox import TableMirrors
from wf78_core.definitions import Operation, Result

__all__ = ["EnginePort", "RelayPort"]


class RelayPort(Protocol):
    """What a table asks of the outbox relay (:class:`~wf78_core.data.mirrors.Relay`)."""

    @property
    def tables(self) -> Mapping[str, TableMirrors]:
        """The mirrored tables by name."""
        ...

    async def write(
        self, table: str, entries: list[dict[str, Any]], call: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run ``call``, a write carrying the outbox ``entries``, and wake the relay."""
        ...

    async def read_through(
        self,
        table: str,
        key: str,
        read: Callable[[], Awaitable[list[dict[str, Any]]]],
        priority: int | None,
    ) -> list[dict[str, Any]]:
        """One row by its cache ``key``, from the cache mirror or else ``read()``."""
        ...


class EnginePort(Protocol):
    """The engine as the data layer sees it: its configuration, its sources, its relay,
    ``submit`` (every table operation goes through it) and what a caller's table call passes
    first (its limits, and its tenant's fair share)."""

    @property
    def config(self) -> Config: ...

    @property
    def settings(self) -> EngineSettings: ...

    @property
    def sources(self) -> SourcePool: ...

    @property
    def mirrors(self) -> RelayPort | None:
        """The outbox relay, when some table has mirrors."""
        ...

    async def submit(
        self,
        op: Operation,
        *,
        priority: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Result: ...

    @property
    def backend(self) -> Backend:
        """Where runs live: maintenance purges their idempotency keys."""
        ...

    @property
    def limits(self) -> Limiter:
        """The ``[limits.<name>]`` a caller's table call passes first."""
        ...

    @property
    def admission(self) -> Admission:
        """Its ``fair_by``: the identity field a caller's tenant is (``""``: fair shares off)."""
        ...
