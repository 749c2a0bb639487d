"""The view one caller has of one table: its scope, its clock, and every argument check.

:class:`TableView` holds what a :class:`~wf78_core.data.table.Table` is built from (the
table's configuration, the caller's identity, priority and idempotency key) and turns
what a caller passes into what an operation carries: writable columns only, ids of the
right shape, the owner filter from the identity (never from the caller), the koa78 columns
stamped on writes. Every check raises :class:`~wf78_core.errors.InvalidOperation` naming
the table and the argument, before anything is submitted.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from wf78_core.config import Identity, TableConfig
from wf78_core.data import sharding
from wf78_core.data.outbox import TableMirrors
from wf78_core.data.ports import EnginePort
from wf78_core.data.tenancy import Headers, call_as
from wf78_core.definitions import Operation
from wf78_core.errors import InvalidOperation
from wf78_core.idempotency import AUTO_PREFIX, MAX_KEY, derive_key, fingerprint
from wf78_core.ids import id_problem

__all__ = ["DEFAULT_NUMBER", "MAX_ID", "MAX_NUMBER", "TableView", "owner_problem"]

# koa78's getnumber default, and the most rows one read returns.
DEFAULT_NUMBER = 15
MAX_NUMBER = 1000
# The id column of MySQL tables holds at most this many characters.
MAX_ID = 64
_BASE = ("id", "upby", "uptime")
_DIGITS = re.compile(r"[0-9]+")
_SCOPE_ENCODER = msgspec.json.Encoder()
# The fingerprint of the keyed write method running in this task (set by TableView._key),
# which that method's operations carry with its caller's key: every step of one call, on
# every shard, names the same request. A context variable, not an attribute: one view may
# serve many tasks at once.
_CALL: ContextVar[str | None] = ContextVar("wf78_table_call", default=None)
T = TypeVar("T")


def owner_problem(value: str) -> str | None:
    """Why an identity's owner value (``cid``/``uid``) cannot scope rows, else None.

    MySQL's owner column holds 64 characters, and ``INSERT IGNORE`` cuts a longer value to
    another owner's; its PAD SPACE collations find ``'x'`` rows for ``'x '``.
    """
    if len(value) > MAX_ID:
        return f"is longer than the {MAX_ID} characters the owner column holds"
    if value.endswith(" "):
        return "ends with a space (MySQL would match it to the owner without one)"
    return None


class TableView:
    """One configured table as one caller (``identity``) sees it at one ``priority``; the
    base of :class:`~wf78_core.data.table.Table`, which documents the arguments."""

    # The most rows one read returns; set it on a class or an instance to change the cap.
    max_number: int = MAX_NUMBER

    def __init__(
        self,
        engine: EnginePort,
        name: str,
        *,
        identity: Identity | None = None,
        priority: int | None = None,
        clock: Callable[[], datetime] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        config = engine.config.tables.get(name)
        if config is None:
            raise InvalidOperation(
                f"unknown table {name!r} (configured: {sorted(engine.config.tables)})"
            )
        self.engine = engine
        self.name = name
        self.config: TableConfig = config
        self.identity = identity
        self.owner = config.owner
        # The writable columns, in declared order (koa78's colsImp).
        self.columns: tuple[str, ...] = tuple(config.columns)
        self.schema = config.schema()
        if identity is not None and identity.max_priority is not None:
            wanted = engine.settings.submit_priority if priority is None else priority
            priority = max(wanted, identity.max_priority)
        self.priority = priority
        self._clock = clock
        if idempotency_key is not None:
            self._check_key(idempotency_key)
        self.idempotency_key = idempotency_key
        relay = engine.mirrors
        self._mirrors: TableMirrors | None = relay.tables.get(name) if relay is not None else None

    def __repr__(self) -> str:
        return f"Table({self.name!r}, owner={self.owner!r})"

    async def call_as(
        self,
        method: str,
        headers: Headers | None,
        function: Callable[..., Awaitable[T]],
        /,
        *args: Any,
    ) -> T:
        """``function(*args)`` as one call of the koa78 ``method`` by this view's caller,
        identity or not (a data route's request): the limits are passed (else
        :class:`~wf78_core.errors.RateLimited`) and the tenant set once for every method
        called inside; on success ``headers`` get the ``RateLimit`` headers to answer."""
        return await call_as(
            self.engine, self.name, self.identity, method, headers, function, *args
        )

    # -- operations -----------------------------------------------------------------------

    async def _submit(self, action: str, **fields: Any) -> Any:
        config = self.config
        key = fields.get("idempotency_key")
        if key is not None and not key.startswith(AUTO_PREFIX):
            fields["idempotency_fingerprint"] = _CALL.get()
        op = Operation(
            action=action,
            table=self.name,
            kind=config.kind,
            data_source=config.data_source,
            **fields,
        )
        return (await self.engine.submit(op, priority=self.priority)).value

    async def _submit_to(self, source: str, action: str, **fields: Any) -> Any:
        key = fields.get("idempotency_key")
        if key is not None and not key.startswith(AUTO_PREFIX):
            fields["idempotency_fingerprint"] = _CALL.get()
        op = Operation(action=action, table=self.name, data_source=source, **fields)
        return (await self.engine.submit(op, priority=self.priority)).value

    # -- checks ---------------------------------------------------------------------------

    def _invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(f"table {self.name!r}: {message}")

    def _key(self, given: str | None, method: str, *arguments: Any) -> str | None:
        """The idempotency key of a call of ``method``: its own, else derived from the view's.
        With a key, the call's ``arguments`` are its request: their fingerprint goes with
        the key (a replay asking for another request is refused, HTTP 422)."""
        if given is None:
            view = self.idempotency_key
            key = None if view is None else derive_key(view, self.name, method)
        else:
            self._check_key(given)
            key = given
        if key is not None:
            _CALL.set(fingerprint(self.name, method, *arguments))
        elif _CALL.get() is not None:
            _CALL.set(None)
        if key is None or self.owner is None:
            return key
        # Owner first, JSON-quoted: one tenant's key (and the ids derived from it) never
        # meets another's, whatever either holds (a ":" in an owner or a key included).
        [(owner, value)] = self._scope().items()
        return derive_key(_SCOPE_ENCODER.encode([owner, value]).decode(), key)

    def _check_key(self, key: Any) -> None:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
            shown = f"{len(key)} characters" if isinstance(key, str) else repr(key)
            raise self._invalid(
                f"idempotency_key must be a string of 1 to {MAX_KEY} characters, got {shown}"
            )
        if key.startswith(AUTO_PREFIX):
            raise self._invalid(
                f"idempotency_key must not start with {AUTO_PREFIX!r} (generated keys do)"
            )

    def _now(self) -> datetime:
        return self._clock() if self._clock is not None else sharding.now()

    def _write_shard(self) -> str | None:
        spec = self.config.sharding
        if spec is None:
            return None
        return sharding.shard_of(spec.type, sharding.to_date(self._now()))

    def _scope(self) -> dict[str, Any]:
        """The owner filter from the identity; {} for a table without an owner."""
        owner = self.owner
        if owner is None:
            return {}
        if self.identity is None:
            raise self._invalid(f"rows are scoped by {owner!r}: an identity is required")
        value = getattr(self.identity, owner)
        if not value:
            raise self._invalid(f"rows are scoped by {owner!r} and the identity has no {owner}")
        problem = owner_problem(value)
        if problem is not None:
            raise self._invalid(f"rows are scoped by {owner!r}: the identity's {owner} {problem}")
        return {owner: value}

    def _stamp(self, values: dict[str, Any], *, owner: bool) -> dict[str, Any]:
        """``values`` plus the koa78 columns: upby, uptime and (``owner``) the owner."""
        stamped = dict(values)
        stamped["upby"] = self.identity.uname if self.identity is not None else None
        stamped["uptime"] = self._now()
        if owner:
            stamped.update(self._scope())
        return stamped

    def _values(self, values: Any, field: str) -> dict[str, Any]:
        """Writable columns only: base and owner columns are the table's to set."""
        if not isinstance(values, Mapping):
            raise self._invalid(
                f"{field} must be a mapping of column to value, got {type(values).__name__}"
            )
        for column in values:
            if column in _BASE or (column == self.owner and column is not None):
                raise self._invalid(
                    f"{field}: column {column!r} is set by the table and cannot be written"
                )
            if column not in self.columns:
                raise self._invalid(
                    f"{field}: unknown column {column!r} (writable: {list(self.columns)})"
                )
        return dict(values)

    def _rows(self, rows: Any) -> list[Mapping[str, Any]]:
        """Rows as mappings; a sequence row gives values in declared column order."""
        if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Sequence):
            raise self._invalid(f"rows must be a list of rows, got {type(rows).__name__}")
        out: list[Mapping[str, Any]] = []
        for index, row in enumerate(rows):
            if isinstance(row, Mapping):
                out.append(row)
            elif isinstance(row, Sequence) and not isinstance(row, str | bytes):
                if len(row) != len(self.columns):
                    raise self._invalid(
                        f"rows[{index}] has {len(row)} values for {len(self.columns)} "
                        f"columns {list(self.columns)}"
                    )
                out.append(dict(zip(self.columns, row, strict=True)))
            else:
                raise self._invalid(f"rows[{index}] must be a mapping or a list of values")
        return out

    def _row_id(self, value: Any, field: str) -> str:
        """An id of a text-id table's shape; on a snowflake table any 1 to 64 characters
        Python callers give (the data routes take only digits there, as koa78)."""
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self._invalid(f"{field} must be a string or an integer, got {value!r}")
        text = str(value)
        if self.config.id == "text":
            problem = id_problem(text, "text")
        elif not text or len(text) > MAX_ID:
            problem = f"must have 1 to {MAX_ID} characters"
        else:
            problem = None
        if problem is not None:
            shown = text if len(text) <= MAX_ID + 8 else text[:MAX_ID] + "..."
            raise self._invalid(f"{field} {problem}, got {shown!r}")
        return text

    def _given_id(self, values: Any, field: str, *, required: bool) -> tuple[str | None, Any]:
        """The caller's id of a row to insert, split from its ``values``, on a table with
        text ids (``required``: refused without one); ``(None, values)`` on a snowflake
        table, whose ids are minted (an ``id`` there is refused as a base column)."""
        if self.config.id != "text" or not isinstance(values, Mapping):
            return None, values
        if values.get("id") is None:
            if required:
                raise self._invalid(
                    f"{field}.id is required: the table's ids are text (id = 'text'), "
                    "chosen by the caller"
                )
            return None, {key: value for key, value in values.items() if key != "id"}
        return self._split_id(values, field)

    def _split_id(self, values: Any, field: str) -> tuple[str, dict[str, Any]]:
        if not isinstance(values, Mapping):
            raise self._invalid(f"{field} must be a mapping, got {type(values).__name__}")
        if values.get("id") is None:
            raise self._invalid(f"{field} needs an id")
        rest = {key: value for key, value in values.items() if key != "id"}
        return self._row_id(values["id"], f"{field}.id"), rest

    def _where(self, where: Any) -> dict[str, Any]:
        if where is None:
            return {}
        if not isinstance(where, Mapping):
            raise self._invalid(f"where must be a mapping, got {type(where).__name__}")
        for column in where:
            if column not in self.schema:
                raise self._invalid(f"where: unknown column {column!r}")
            if column == self.owner:
                raise self._invalid(f"where: the owner column {column!r} comes from the identity")
        return dict(where)

    def _cols(self, cols: Any) -> list[str] | None:
        if cols is None:
            return None
        names = self._names(cols, "cols")
        for name in names:
            if name not in self.schema:
                raise self._invalid(f"cols: unknown column {name!r}")
        return names or None

    def _order(self, order: Any) -> list[tuple[str, bool]]:
        """``(column, descending)`` pairs from ``"col"``, ``"col asc|desc"`` or ``"-col"``."""
        if order is None:
            return []
        out = []
        for entry in self._names(order, "order"):
            parts = entry.removeprefix("-").split()
            descending = entry.startswith("-")
            if len(parts) == 2 and not descending and parts[1].lower() in ("asc", "desc"):
                descending = parts[1].lower() == "desc"
            elif len(parts) != 1:
                raise self._invalid(
                    f"order: bad entry {entry!r} (expected 'col', 'col asc', 'col desc' or '-col')"
                )
            if parts[0] not in self.schema:
                raise self._invalid(f"order: unknown column {parts[0]!r} in {entry!r}")
            out.append((parts[0], descending))
        return out

    def _count(self, value: Any, field: str) -> int:
        """A non-negative integer (koa78 paging came as digits)."""
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._invalid(f"{field} must be a non-negative integer, got {value!r}")
        return value

    def _names(self, value: Any, field: str) -> list[str]:
        """A list of names from a list or a comma-separated string."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
            return [item.strip() for item in value]
        raise self._invalid(f"{field} must be a list of names or a comma-separated string")
