"""The Redis data source (redis.asyncio with hiredis): a cache and small owner-scoped tables.

Key layout, under ``key_prefix`` (default ``wf78``):

- ``{prefix}:cache:{key}`` holds a cache value as msgspec JSON (``cache_get``,
  ``cache_set`` with an optional ``ttl`` in seconds, ``cache_delete``); ``incr`` keeps a
  plain integer there, which ``cache_get`` reads back as a number.
- ``{prefix}:{table}:row:{id}`` is a row of a table without an owner column: a hash with one
  field per non-null column, each encoded by its declared type (``id`` included). The table
  name sits inside braces, a Redis Cluster hash tag, so all of a table's keys share one slot.
  ``{prefix}:{table}:all`` is the set of its ids.
- On a table with an owner column (``cid`` or ``uid``) each owner has its own ids: a row is
  (owner, id), the hash ``{prefix}:{table}:row:{n}:{id}:{owner}`` (``n``: the id's length in
  bytes, so any id and owner name one row), and ``{prefix}:{table}:rows`` the sorted set of
  every row's ``{n}:{id}:{owner}``. ``{prefix}:{table}:owner:{value}`` is the set of each
  owner's ids. The hash holds the plain ``id``, which rows come back (and sort) with.

Every table write is one Lua script (:mod:`wf78_redis.scripts`), so a row and its index
entries change together and a duplicate row is refused atomically. ``get`` finds rows by
their keys (id and owner), else by id (on an owned table every owner's row of that id: what
SQL's ``WHERE id = ?`` matches on a table keyed by (owner, id), one range of the sorted set),
else through the owner index, else through the index of every row, applies the other
equality filters inside the same script, then orders, pages and projects in Python; it is
meant for the small, hot tables a cache holds, not for scans of millions of rows.

Table actions, each serving a ``Table`` method: ``add`` -> the id; ``add_many`` -> the ids,
all rows or none (with ``conflict = "ignore"``: rows whose (owner, id) exists are skipped ->
how many were inserted); ``get`` -> rows; ``count`` -> how many rows match ``where``;
``update``, ``delete``, ``delete_many`` (``where`` with the id or the owner) and
``update_many`` (each of ``rows`` by its id, with its own values; ``where`` filters them, the
owner) -> rows changed; ``upsert`` -> the id (of the row its owner and id name). The filters
apply inside the write's script: a row of another owner is left exactly as a missing one. An
update that sets the owner moves the row to that owner's key, and is refused as a conflict
when that owner has a row with the id. Sharding (``create_table``, ``list_shards``) is not
supported, so a sharded table on a Redis source is refused when the engine starts.

Auto-pipelining (:mod:`wf78_redis.pipeline`): while :meth:`RedisSource.run` runs in a task
group, commands issued together share one pipelined round trip, and each caller still gets
its own reply or error. Without ``run``, every command is its own round trip.

Idempotency (:mod:`wf78_core.idempotency`): an ``incr`` with an idempotency key (the engine
gives it a generated one) keeps a marker ``{prefix}:idem:{key}`` holding its result, set in the
same script as the increment: a replay returns that result and counts nothing. Table writes
with a caller's key keep one under the table's hash tag (``{prefix}:{table}:idem:{key}``) the
same way; a write whose request has a fingerprint first ties the key to it
(``{prefix}:{table}:idem#fp:{key}``, ``SET NX``), so a replay asking for another request is
refused with IdempotencyConflict before it writes anything. An insert whose ids were
generated for it and finds them stored ran before, and succeeds. Markers live
``idempotency_ttl`` seconds (callers' keys) or
``auto_idempotency_ttl`` (generated ones). ``cache_set``, ``cache_delete``, updates and
deletes by key are idempotent as they are.

Each command is tried once: connection errors, timeouts and a loading server raise a
retryable DataSourceError and the engine decides whether to try again (redis-py's own retry
is off, so a pipeline that may have run is never sent twice behind the engine's back).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from wf78_core.plugin import (
    ConfigError,
    DataSourceError,
    InvalidOperation,
    Operation,
    SourceSpec,
    check_replay,
    convert_options,
    explicit_key,
    generated_ids,
    is_auto,
)

from .errors import closed_error, map_error
from .pipeline import Arg, AutoPipeline
from .scripts import (
    INCR_ONCE,
    INCR_WITH_TTL,
    MATCH_ROWS,
    SCRIPTS,
    UPDATE_ROWS,
    WRITE_ROWS,
    Script,
)
from .tables import RedisTable

__all__ = ["DEFAULT_URL", "RedisOptions", "RedisSource"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis://", "rediss://", "unix://")
_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()
_CACHE_ACTIONS = frozenset({"cache_get", "cache_set", "cache_delete", "incr"})


class RedisOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The ``[datasources.<name>]`` keys of type ``redis`` besides ``type`` and ``url``."""

    max_connections: int = 50
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0
    key_prefix: str = "wf78"
    # Commands sent per round trip at most.
    max_pipeline: int = 1000
    # Commands waiting for the pipeline at most; further callers wait for room.
    queue_size: int = 10_000
    # A connection idle this long is PINGed before use (0 = never).
    health_check_interval: float = 15.0
    # Seconds an idempotency marker is kept: of a caller's key, and of a generated one
    # (those only guard the engine's own retries and re-executions).
    idempotency_ttl: float = 86_400.0
    auto_idempotency_ttl: float = 3_600.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_pipeline", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in (
            "socket_timeout",
            "connect_timeout",
            "idempotency_ttl",
            "auto_idempotency_ttl",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.health_check_interval < 0:
            raise ValueError("health_check_interval must be >= 0")
        # Braces would become the hash tag of every key and put all tables in one slot.
        if not self.key_prefix or "{" in self.key_prefix or "}" in self.key_prefix:
            raise ValueError(
                f"key_prefix must be non-empty and brace-free, got {self.key_prefix!r}"
            )


class RedisSource:
    """A :class:`~wf78_core.plugin.DataSource` on one Redis database.

    Call :meth:`open`, then start :meth:`run` in a task group (``await tg.start(source.run)``)
    for auto-pipelining. ``pipelines`` and ``commands`` count round trips and the commands
    they carried.
    """

    Options = RedisOptions
    actions: frozenset[str] = frozenset(
        {
            "cache_get",
            "cache_set",
            "cache_delete",
            "incr",
            "noop",
            "add",
            "add_many",
            "get",
            "count",
            "update",
            "update_many",
            "upsert",
            "delete",
            "delete_many",
        }
    )

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.options = convert_options(spec, RedisOptions)
        self.url = _url(spec)
        self.prefix = self.options.key_prefix
        self.concurrency = min(self.options.queue_size, 2048)
        self._tables = {
            name: RedisTable(schema, self.prefix, spec.name) for name, schema in spec.tables.items()
        }
        self._client: Redis | None = None
        self._pipeline: AutoPipeline | None = None
        self._pipelines = 0
        self._commands = 0

    @property
    def pipelines(self) -> int:
        """Pipelined round trips sent since the source was built."""
        return self._pipelines + (self._pipeline.pipelines if self._pipeline else 0)

    @property
    def commands(self) -> int:
        """Commands sent in those round trips."""
        return self._commands + (self._pipeline.commands if self._pipeline else 0)

    def cache_key(self, key: str) -> str:
        """The Redis key of a cache entry (or counter) named ``key``."""
        return f"{self.prefix}:cache:{key}"

    async def open(self) -> None:
        """Connect, check the server answers, and load the Lua scripts."""
        if self._client is not None:
            return
        options = self.options
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=options.max_connections,
            # How long a caller waits for a free connection when all are busy.
            timeout=options.connect_timeout + options.socket_timeout,
            socket_timeout=options.socket_timeout,
            socket_connect_timeout=options.connect_timeout,
            health_check_interval=options.health_check_interval,
            retry=Retry(NoBackoff(), 0),
        )
        client = Redis.from_pool(pool)
        try:
            await client.ping()
            for script in SCRIPTS:
                await client.script_load(script.source)
        except BaseException as error:
            with anyio.CancelScope(shield=True):
                await client.aclose()
            if isinstance(error, Exception):
                raise map_error(error, self.name) from error
            raise
        self._client = client
        self._pipeline = AutoPipeline(
            client,
            source=self.name,
            max_pipeline=options.max_pipeline,
            queue_size=options.queue_size,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The auto-pipelining loop, until cancelled. The pipeline in flight then completes;
        commands still queued fail with a retryable DataSourceError."""
        if self._pipeline is None:
            raise closed_error(self.name, "not open")
        await self._pipeline.run(task_status=task_status)

    async def close(self) -> None:
        """Close the connection pool (idempotent). Cancel :meth:`run` first."""
        client, pipeline = self._client, self._pipeline
        self._client = self._pipeline = None
        if pipeline is not None:
            self._pipelines += pipeline.pipelines
            self._commands += pipeline.commands
        if client is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await client.aclose()
            except Exception as error:
                raise map_error(error, self.name) from error

    async def health(self) -> None:
        """A PING on its own connection; a retryable DataSourceError when it fails."""
        client = self._client
        if client is None:
            raise closed_error(self.name, "not open")
        try:
            await client.ping()
        except Exception as error:
            raise DataSourceError(
                f"redis source {self.name!r} is unhealthy: {type(error).__name__}: {error}",
                data_source=self.name,
                retryable=True,
            ) from error

    async def execute(self, op: Operation) -> Any:
        """Perform one operation; see the module docs for what each action returns."""
        if op.action not in self.actions:
            raise InvalidOperation(
                f"action {op.action!r} is not supported by redis source {self.name!r} "
                f"(expected one of {sorted(self.actions)})",
                data_source=self.name,
            )
        if op.action == "noop":
            return None
        if op.action in _CACHE_ACTIONS:
            pipeline = self._pipeline
            if pipeline is None:
                raise closed_error(self.name, "not open")
            reply, finish = self._send_cache(pipeline, op)
            return finish(pipeline.outcome(await reply))
        return await self._table_action(self._table(op), op)

    async def _table_action(self, table: RedisTable, op: Operation) -> Any:
        match op.action:
            case "get":
                columns = table.check_columns(op.columns)
                order = table.parse_order(op.order)
                args = table.match_args("get", op.where)
                if args is None:
                    return []
                replies = await self._script(MATCH_ROWS, table, args)
                return table.shape(
                    replies, columns=columns, order=order, limit=op.limit, offset=op.offset
                )
            case "add" | "upsert":
                if op.values is None:
                    raise table.invalid(f"{op.action} needs values (table {op.table!r})")
                args, ids = table.write_args(
                    [op.values], "insert" if op.action == "add" else "upsert", "values"
                )
                return await self._write(table, args, op, ids[0])
            case "count":
                args = table.match_args("count", op.where)
                return 0 if args is None else int(await self._script(MATCH_ROWS, table, args))
            case "add_many":
                if op.rows is None:
                    raise table.invalid(f"add_many needs rows (table {op.table!r})")
                if op.conflict == "ignore":
                    # Existing ids are skipped: the result is how many rows were new.
                    if not op.rows:
                        return 0
                    args, _ = table.write_args(op.rows, "ignore", "rows")
                    return await self._write(table, args, op, None, counted=True)
                if not op.rows:
                    return []
                args, ids = table.write_args(op.rows, "insert", "rows")
                return await self._write(table, args, op, ids)
            case "update":
                table.require_key("update", op.where)
                args = table.match_args("update", op.where, op.values)
                return 0 if args is None else await self._match(table, args, op)
            case "update_many":
                if op.rows is None:
                    raise table.invalid(f"update_many needs rows (table {op.table!r})")
                if not op.rows:
                    return 0
                args = table.update_many_args(op.rows, op.where)
                return 0 if args is None else await self._match(table, args, op, UPDATE_ROWS)
            case _:
                table.require_key(op.action, op.where)
                where = op.where or {}
                if op.action == "delete_many" and not any(
                    isinstance(value, list | tuple) for value in where.values()
                ):
                    raise table.invalid(
                        f"delete_many needs a list value in where (table {op.table!r}), "
                        f"got {where!r}"
                    )
                args = table.match_args("delete", where)
                return 0 if args is None else await self._match(table, args, op)

    def _table(self, op: Operation) -> RedisTable:
        if op.table is None:
            raise InvalidOperation(f"{op.action} needs a table", data_source=self.name)
        table = self._tables.get(op.table)
        if table is None:
            raise InvalidOperation(
                f"unknown table {op.table!r} (redis source {self.name!r} has "
                f"{sorted(self._tables)})",
                data_source=self.name,
            )
        return table

    def _send_cache(
        self, pipeline: AutoPipeline, op: Operation
    ) -> tuple[Awaitable[Any], Callable[[Any], Any]]:
        """Send the command of a cache action: its reply, and what turns it into the result.
        The command is packed by then and not kept while the reply is awaited (with 1,000
        in flight, 1,000 fewer objects for the garbage collector to walk)."""
        command, script, finish = self._cache_command(op)
        return pipeline.send(command, script), finish

    def _cache_command(
        self, op: Operation
    ) -> tuple[tuple[Arg, ...], Script | None, Callable[[Any], Any]]:
        """The command of a cache action, its script if any, and what turns its reply into
        the action's result."""
        if not isinstance(op.key, str) or not op.key:
            raise InvalidOperation(
                f"{op.action} needs a non-empty string key, got {op.key!r}", data_source=self.name
            )
        key = f"{self.prefix}:cache:{op.key}"
        match op.action:
            case "cache_get":
                return ("GET", key), None, _cached_value
            case "cache_set":
                try:
                    payload = _JSON_ENCODER.encode(op.value)
                except (msgspec.EncodeError, TypeError) as error:
                    raise InvalidOperation(
                        f"cache_set value of key {op.key!r} is not JSON-encodable: {error}",
                        data_source=self.name,
                    ) from error
                if op.ttl is None:
                    return ("SET", key, payload), None, _stored
                return ("SET", key, payload, "PX", self._ttl_ms(op)), None, _stored
            case "cache_delete":
                return ("DEL", key), None, bool
            case _:
                amount = 1 if op.value is None else op.value
                if isinstance(amount, bool) or not isinstance(amount, int):
                    raise InvalidOperation(
                        f"incr amount (value) must be an int, got {amount!r}",
                        data_source=self.name,
                    )
                if op.idempotency_key is not None:
                    marker = f"{self.prefix}:idem:{op.idempotency_key}"
                    ttl = 0 if op.ttl is None else self._ttl_ms(op)
                    keep = self._marker_ms(op.idempotency_key)
                    command = _evalsha(INCR_ONCE, 2, key, marker, amount, ttl, keep)
                    return command, INCR_ONCE, _counted
                if op.ttl is None:
                    return ("INCRBY", key, amount), None, int
                command = _evalsha(INCR_WITH_TTL, 1, key, amount, self._ttl_ms(op))
                return command, INCR_WITH_TTL, int

    def _ttl_ms(self, op: Operation) -> int:
        if op.ttl is None or op.ttl <= 0:
            raise InvalidOperation(
                f"{op.action} ttl must be positive seconds, got {op.ttl!r}", data_source=self.name
            )
        return max(1, round(op.ttl * 1000))

    async def _claim(self, table: RedisTable, key: str, op: Operation) -> None:
        """Tie a caller's ``key`` to its request's fingerprint before the write: the first
        request sets it (``SET NX``), a replay asking for another request is refused
        (IdempotencyConflict) before anything is written. It lives as long as the marker."""
        given = op.idempotency_fingerprint
        if given is None:
            return
        claim = f"{table.marker_prefix[:-1]}#fp:{key}"  # beside the marker, never a marker
        # Two commands, not SET NX GET (Redis 7): a replay pays the second round trip.
        while not await self._call(("SET", claim, given, "NX", "PX", self._marker_ms(key))):
            recorded = await self._call(("GET", claim))
            if recorded is not None:
                check_replay(recorded.decode(), op, data_source=self.name)
                return

    def _marker_ms(self, key: str) -> int:
        """How long the idempotency marker of ``key`` lives, in milliseconds."""
        options = self.options
        seconds = options.auto_idempotency_ttl if is_auto(key) else options.idempotency_ttl
        return max(1, round(seconds * 1000))

    async def _write(
        self,
        table: RedisTable,
        args: list[Arg],
        op: Operation,
        result: Any,
        *,
        counted: bool = False,
    ) -> Any:
        """Run ``write_rows``; ``result`` (the ids), or with ``counted`` the rows written,
        unless it ran before or meets a duplicate."""
        key = explicit_key(op)
        if key is None:
            reply = await self._script(WRITE_ROWS, table, args)
        else:
            await self._claim(table, key, op)
            marker = table.marker_prefix + key
            remembered = _JSON_ENCODER.encode(result)
            command = _evalsha(
                WRITE_ROWS, 2, table.index_key, marker, *args, remembered, self._marker_ms(key)
            )
            reply = await self._call(command, WRITE_ROWS)
        if reply[0] == 1:
            return int(reply[1]) if counted else result
        if reply[0] == 2:
            return _JSON_DECODER.decode(reply[1])
        duplicate = reply[1].decode()
        # The script writes all rows or none: one of our own ids stored means it ran before
        # (on an owned table, the row of that id and the owner written: never another's).
        if duplicate in generated_ids(op):
            return result
        raise DataSourceError(
            f"duplicate id {duplicate!r} in table {table.schema.name!r} of redis source "
            f"{self.name!r}",
            data_source=self.name,
            retryable=False,
            conflict=True,
        )

    async def _match(
        self, table: RedisTable, args: list[Arg], op: Operation, script: Script = MATCH_ROWS
    ) -> int:
        """An update or delete through ``match_rows`` (``update_many``: ``update_rows``): rows
        changed (with a caller's key, the count of its first run). A conflict when an update
        would move a row to an owner that has a row with its id."""
        key = explicit_key(op)
        if key is None:
            counted = await self._script(script, table, args)
        else:
            await self._claim(table, key, op)
            marker = table.marker_prefix + key
            command = _evalsha(script, 2, table.index_key, marker, *args, self._marker_ms(key))
            counted = await self._call(command, script)
        if isinstance(counted, list):  # {0, id}: a new owner of a row has a row of its id
            raise DataSourceError(
                f"cannot move id {counted[1].decode()!r} to another owner in table "
                f"{table.schema.name!r} of redis source {self.name!r}: that owner has a row "
                "with this id",
                data_source=self.name,
                retryable=False,
                conflict=True,
            )
        # No count in the marker: the key's first write of this same request was an insert
        # (Table.upsert_by_first_field's replay finds the row it added), and changed no row.
        return 0 if counted is None else int(counted)

    async def _script(self, script: Script, table: RedisTable, args: list[Arg]) -> Any:
        return await self._call(_evalsha(script, 1, table.index_key, *args), script)

    async def _call(self, command: tuple[Arg, ...], script: Script | None = None) -> Any:
        pipeline = self._pipeline
        if pipeline is None:
            raise closed_error(self.name, "not open")
        return await pipeline.call(command, script)


def _cached_value(raw: bytes | None) -> Any:
    """A cache entry as stored: msgspec JSON, or as is when someone else wrote it."""
    if raw is None:
        return None
    try:
        return _JSON_DECODER.decode(raw)
    except msgspec.DecodeError:
        return raw.decode(errors="replace")


def _stored(reply: Any) -> bool:
    return True


def _counted(reply: Any) -> int:
    """The value of an ``incr_once`` reply, first run or replay."""
    return int(reply[1])


def _evalsha(script: Script, *args: Arg) -> tuple[Arg, ...]:
    """EVALSHA of ``script`` with its numkeys, keys and arguments."""
    return ("EVALSHA", script.sha, *args)


def _url(spec: SourceSpec) -> str:
    url = spec.url or DEFAULT_URL
    if not url.startswith(_SCHEMES):
        raise ConfigError(
            f"expected 'redis://host:6379/0' (or rediss://, unix://), got {url!r}",
            path=f"datasources.{spec.name}.url",
        )
    return url
