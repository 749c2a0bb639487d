"""Sharded tables: one physical table per UTC day or month, and the maintenance that keeps them.

A table configured with ``sharding = {type = "daily"|"monthly", retention_days, ahead}`` is
stored as ``<table>_YYYYMMDD`` or ``<table>_YYYYMM`` (as koa78 named them); the declared
table's columns are every shard's columns. Writes go to the shard of "now"; reads take the
shard of today or fan out over a date range (:class:`wf78_core.data.table.Table`).

Creating and dropping shards is not work for the insert path: :func:`maintain` (the built-in
action ``tables.maintain``, run once when the engine starts, by the ``wf78.maintenance``
workflow every hour and by ``wf78 maintain``) creates today's shard and the next ``ahead``
ones and drops shards whose whole period ended more than ``retention_days`` days ago. At
start it also creates the declared tables the SQL sources lack and checks every table's
columns against the declaration (``wf78 maintain --migrate`` adds the missing ones).

A by-id update or delete finds the shard of its row (:func:`write_by_id`): a snowflake id
carries the time it was minted, and the row was written no earlier; any other id (text
ids, ids derived from an idempotency key) is looked for in every shard of the retention
window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import msgspec

from wf78_core.config import ShardingConfig, TableConfig
from wf78_core.core.actions import TaskContext
from wf78_core.data.keys import purge_keys
from wf78_core.data.ports import EnginePort
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, InvalidOperation, Problem
from wf78_core.idempotency import derive_key
from wf78_core.ids import snowflake_fields

__all__ = [
    "SHARD_ACTIONS",
    "ColumnChange",
    "MaintenanceReport",
    "ShardType",
    "TableChange",
    "builtin_actions",
    "id_day",
    "id_shards",
    "is_expired",
    "maintain",
    "maintain_action",
    "now",
    "overlaps",
    "parse_suffix",
    "period_end",
    "shard_of",
    "to_date",
    "upcoming",
    "window",
    "write_by_id",
]

ShardType = Literal["daily", "monthly"]
# What a data source must perform to hold a sharded table.
SHARD_ACTIONS = frozenset({"create_table", "drop_table", "list_shards"})


def now() -> datetime:
    """The current time in UTC. Shards follow UTC days; tests monkeypatch this clock."""
    return datetime.now(UTC)


def to_date(value: Any, field: str = "date") -> date:
    """A date from a date, a datetime (its UTC day when it has a zone) or an ISO string."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo is not None else value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return to_date(datetime.fromisoformat(value), field)
        except ValueError:
            pass
    raise InvalidOperation(f"{field} must be a date, a datetime or an ISO date, got {value!r}")


def shard_of(kind: ShardType, day: date) -> str:
    """The suffix of the shard holding ``day``: ``YYYYMMDD`` or ``YYYYMM``."""
    return day.strftime("%Y%m%d" if kind == "daily" else "%Y%m")


def parse_suffix(kind: ShardType, suffix: str) -> date | None:
    """The first day of the shard ``suffix``, or None when it is no shard of that type."""
    try:
        if kind == "daily" and len(suffix) == 8:
            return datetime.strptime(suffix, "%Y%m%d").date()
        if kind == "monthly" and len(suffix) == 6:
            return datetime.strptime(suffix, "%Y%m").date()
    except ValueError:
        return None
    return None


def _next_period(kind: ShardType, start: date) -> date:
    if kind == "daily":
        return start + timedelta(days=1)
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


def _previous_period(kind: ShardType, start: date) -> date:
    if kind == "daily":
        return start - timedelta(days=1)
    return (start - timedelta(days=1)).replace(day=1)


def period_end(kind: ShardType, start: date) -> date:
    """The last day of the shard starting on ``start``."""
    return _next_period(kind, start) - timedelta(days=1)


def upcoming(kind: ShardType, today: date, ahead: int) -> list[str]:
    """The suffixes of today's shard and the next ``ahead`` ones."""
    start = parse_suffix(kind, shard_of(kind, today))
    assert start is not None
    suffixes = []
    for _ in range(ahead + 1):
        suffixes.append(shard_of(kind, start))
        start = _next_period(kind, start)
    return suffixes


def is_expired(kind: ShardType, suffix: str, today: date, retention_days: int) -> bool:
    """Whether the shard's last day is more than ``retention_days`` days before ``today``."""
    start = parse_suffix(kind, suffix)
    if start is None:
        return False  # not a shard of ours: never dropped
    return period_end(kind, start) < today - timedelta(days=retention_days)


def window(kind: ShardType, today: date, retention_days: int) -> list[str]:
    """The suffixes of the shards a row written by ``today`` may still be in, newest first:
    today's and the earlier ones maintenance keeps."""
    start = parse_suffix(kind, shard_of(kind, today))
    assert start is not None
    suffixes = []
    while not is_expired(kind, shard_of(kind, start), today, retention_days):
        suffixes.append(shard_of(kind, start))
        start = _previous_period(kind, start)
    return suffixes


def id_day(row_id: str) -> date | None:
    """The UTC day the snowflake ``row_id`` was minted; None when it is no snowflake."""
    try:
        seconds, _, _ = snowflake_fields(row_id)
    except ValueError:
        return None
    return datetime.fromtimestamp(seconds, UTC).date()


def id_shards(
    kind: ShardType, row_id: str, today: date, retention_days: int, *, text_id: bool = False
) -> list[str]:
    """The shards that may hold the row ``row_id``, the likeliest first.

    A snowflake's row was written no earlier than its id was minted: the shard of that day
    and the later ones up to today's come first, then the rest of the retention window
    (an id derived from an idempotency key looks like a snowflake but carries no time). A
    text id (``text_id``), or a time outside the window, gives the window, newest first.
    """
    kept = window(kind, today, retention_days)
    minted = None if text_id else id_day(row_id)
    own = None if minted is None or minted > today else shard_of(kind, minted)
    if own is None or own not in kept:
        return kept
    since = kept[: kept.index(own) + 1][::-1]
    return since + kept[len(since) :]


# write(shard, ids, key) -> rows changed; locate({shard: ids}) -> {shard: ids found there}.
ShardWrite = Callable[[str, list[str], str | None], Awaitable[int]]
Locate = Callable[[dict[str, list[str]]], Awaitable[dict[str, set[str]]]]


async def write_by_id(
    spec: ShardingConfig,
    ids: Sequence[str],
    key: str | None,
    *,
    today: date,
    text_ids: bool,
    write: ShardWrite,
    list_shards: Callable[[], Awaitable[list[str]]],
    locate: Locate,
) -> int:
    """An update or delete of the rows ``ids`` by id, run where they live; rows changed.

    When every id is today's (the common case) it is one ``write`` on today's shard. Else,
    or when that changed fewer rows than ``ids``, the shards of :func:`id_shards` that exist
    are searched: one id is written on each in turn until one changes a row; several ids
    are first located (``locate``, one read per shard), then written shard by shard, each
    only its own rows (so a mirror's resync never reads a row from a shard without it).
    The first write keeps the caller's idempotency ``key``, each further one has its own,
    so a replay repeats each step's result.
    """
    plans = {
        row_id: id_shards(spec.type, row_id, today, spec.retention_days, text_id=text_ids)
        for row_id in ids
    }
    current = shard_of(spec.type, today)
    tried: list[str] = []
    changed = 0
    if all(plan[0] == current for plan in plans.values()):
        changed = await write(current, list(plans), key)
        if changed >= len(plans):
            return changed
        tried.append(current)
    existing = set(await list_shards())
    if len(plans) == 1:
        for shard in next(iter(plans.values())):
            if shard not in tried and shard in existing:
                changed = await write(shard, list(plans), _shard_key(key, tried, shard))
                tried.append(shard)
                if changed:
                    break
        return changed
    wanted: dict[str, list[str]] = {}
    for row_id, plan in plans.items():
        for shard in plan:
            if shard not in tried and shard in existing:
                wanted.setdefault(shard, []).append(row_id)
    found = await locate(wanted) if wanted else {}
    held: dict[str, list[str]] = {}
    for row_id, plan in plans.items():
        holder = next((s for s in plan if row_id in found.get(s, ())), None)
        if holder is not None:
            held.setdefault(holder, []).append(row_id)
    if not held and not tried and key is not None:
        # Nothing left to find (a replayed delete): the caller's key answers what it recorded.
        first = next((s for s in next(iter(plans.values())) if s in existing), None)
        return 0 if first is None else await write(first, list(plans), key)
    for shard in sorted(held, reverse=True):
        changed += await write(shard, held[shard], _shard_key(key, tried, shard))
        tried.append(shard)
    return changed


def _shard_key(key: str | None, tried: list[str], shard: str) -> str | None:
    """The first write of a call keeps the caller's key; each further one gets its own."""
    return key if key is None or not tried else derive_key(key, "shard", shard)


def overlaps(kind: ShardType, suffix: str, since: date | None, until: date | None) -> bool:
    """Whether the shard ``suffix`` holds any day of ``since..until`` (both inclusive)."""
    start = parse_suffix(kind, suffix)
    if start is None:
        return False
    if until is not None and start > until:
        return False
    return since is None or period_end(kind, start) >= since


class TableChange(msgspec.Struct, frozen=True):
    """One physical table created or dropped on one data source."""

    source: str
    table: str


class ColumnChange(msgspec.Struct, frozen=True):
    """One declared column added to one physical table on one data source."""

    source: str
    table: str
    column: str


class MaintenanceReport(msgspec.Struct, kw_only=True):
    """What :func:`maintain` did: shards created and dropped, missing tables created,
    missing columns added (``migrate``)."""

    created: list[TableChange] = []
    dropped: list[TableChange] = []
    tables_created: list[TableChange] = []
    columns_added: list[ColumnChange] = []
    #: idempotency keys past ``idempotency_ttl`` forgotten: data sources', runs' and events'
    keys_purged: int = 0
    run_keys_purged: int = 0


def _targets(engine: EnginePort, name: str, table: TableConfig, *, sharded: bool) -> list[str]:
    """The sources that hold ``table``: its ``data_source``, else every source able to."""
    needed = SHARD_ACTIONS if sharded else frozenset({"create_table"})
    path = f"tables.{name}.sharding" if sharded else f"tables.{name}"
    if table.data_source is not None:
        source = engine.sources.resolve(table.data_source, "create_table")
        missing = needed - source.info.actions
        if missing and sharded:
            raise ConfigError(
                f"data source {source.name!r} (type {source.type!r}) cannot hold the shards of "
                f"table {name!r}: it lacks the actions {sorted(missing)}",
                path=path,
            )
        return [] if missing else [source.name]
    able = [s.name for s in engine.sources if needed <= s.info.actions]
    if sharded and not able:
        raise ConfigError(
            f"no data source can hold the shards of table {name!r} (one needs the actions "
            f"{sorted(SHARD_ACTIONS)})",
            path=path,
        )
    return able


async def maintain(
    engine: EnginePort,
    *,
    create_tables: bool = False,
    today: date | None = None,
    tables: Iterable[str] | None = None,
    priority: int | None = None,
    startup: bool = False,
    migrate: bool = False,
) -> MaintenanceReport:
    """Create upcoming shards and drop expired ones for every sharded table (or ``tables``);
    with ``create_tables`` also create missing declared tables that are not sharded.

    ``startup`` is the engine's start: missing declared tables are created as well, except
    on a source whose ``create_tables`` option is false (nothing is created there, shards
    included), sources out of rotation are left for later, and the columns of every table
    and shard on a source that can list them are checked against the declaration: one
    missing is a :class:`ConfigError` naming the table and the column. ``migrate`` adds the
    missing columns instead (additive only: nothing is dropped or changed).

    Maintaining every table (no ``tables``, not at start) also purges idempotency keys past
    ``[engine] idempotency_ttl`` (:func:`wf78_core.data.keys.purge_keys`).

    The shards' steps are operations submitted to the engine; a plain table's and the
    columns' go to the adapter directly (:class:`_Maintenance`). ``today`` defaults to
    :func:`now`.
    """
    day = today if today is not None else to_date(now())
    work = _Maintenance(engine, day, priority, MaintenanceReport())
    names = list(engine.config.tables) if tables is None else list(tables)
    for name in names:
        table = engine.config.tables.get(name)
        if table is None:
            raise InvalidOperation(f"unknown table {name!r}")
        for source in _targets(engine, name, table, sharded=table.sharding is not None):
            if startup and not _in_rotation(engine, source):
                continue
            creates = not startup or _creates_tables(engine, source)
            physical = await work.tables(name, table, source, creates, create_tables or startup)
            if startup or migrate:
                for shard in physical:
                    await work.columns(name, table, source, shard, migrate)
    if work.problems:
        raise ConfigError(work.problems)
    if tables is None and not startup:  # the whole maintenance: keys past their ttl too
        work.report.keys_purged, work.report.run_keys_purged = await purge_keys(
            engine, priority=priority
        )
    return work.report


def _in_rotation(engine: EnginePort, name: str) -> bool:
    source = engine.sources.get(name)
    return source is not None and source.healthy


def _creates_tables(engine: EnginePort, name: str) -> bool:
    """Whether the engine creates tables on source ``name`` at start (its option
    ``create_tables``, true unless set false)."""
    configured = engine.config.datasources.get(name)
    return configured is None or configured.options.get("create_tables", True) is not False


class _Maintenance:
    """The steps of one :func:`maintain` call: the shards' are operations submitted to the
    engine; those on a plain table and on columns go to the source's adapter directly, so
    that checking the schema at every start counts as no traffic."""

    def __init__(
        self, engine: EnginePort, day: date, priority: int | None, report: MaintenanceReport
    ) -> None:
        self.engine = engine
        self.day = day
        self.priority = priority
        self.report = report
        self.problems: list[Problem] = []

    async def perform(self, action: str, name: str, source: str, shard: str | None = None) -> Any:
        op = Operation(action=action, table=name, shard=shard, data_source=source)
        return (await self.engine.submit(op, priority=self.priority)).value

    async def direct(self, action: str, name: str, source: str, shard: str | None = None) -> Any:
        found = self.engine.sources.get(source)
        assert found is not None
        op = Operation(action=action, table=name, shard=shard, data_source=source)
        return await found.adapter.execute(op)

    async def tables(
        self, name: str, table: TableConfig, source: str, creates: bool, plain: bool
    ) -> list[str | None]:
        """Create (``creates``) and drop what ``table`` needs on ``source``: the table itself
        when ``plain``, or its shards; the physical tables that remain (None: the table)."""
        report, sharding = self.report, table.sharding
        if sharding is None:
            if creates and plain and await self.direct("create_table", name, source):
                report.tables_created.append(TableChange(source, name))
            return [None]
        keep = upcoming(sharding.type, self.day, sharding.ahead)
        if creates:
            for suffix in keep:
                if await self.perform("create_table", name, source, suffix):
                    report.created.append(TableChange(source, f"{name}_{suffix}"))
        remaining: list[str | None] = []
        for suffix in await self.perform("list_shards", name, source):
            if suffix in keep or not is_expired(
                sharding.type, suffix, self.day, sharding.retention_days
            ):
                remaining.append(suffix)
            elif await self.perform("drop_table", name, source, suffix):
                report.dropped.append(TableChange(source, f"{name}_{suffix}"))
        return remaining

    async def columns(
        self, name: str, table: TableConfig, source: str, shard: str | None, migrate: bool
    ) -> None:
        """Check the columns of one physical table (or add the missing ones: ``migrate``)."""
        pool = self.engine.sources.get(source)
        action = "add_columns" if migrate else "list_columns"
        if pool is None or action not in pool.info.actions:
            return  # a source without fixed columns (memory, search, cache)
        physical = name if shard is None else f"{name}_{shard}"
        found: list[str] = await self.direct(action, name, source, shard)
        if migrate:
            self.report.columns_added += [ColumnChange(source, physical, c) for c in found]
            return
        if not found:
            return  # it does not exist (create_tables = false): nothing to check
        for column in table.schema():
            if column not in found:
                path = f"tables.{name}.columns.{column}" if column in table.columns else ""
                self.problems.append(
                    Problem(
                        path or f"tables.{name}",
                        f"table {physical!r} on data source {source!r} has no column "
                        f"{column!r}: run `wf78 maintain --migrate` to add it",
                    )
                )


async def maintain_action(ctx: TaskContext) -> dict[str, Any]:
    """``tables.maintain``: create upcoming shards and drop expired ones (params
    ``create_tables = true`` also creates missing declared tables, ``migrate = true`` adds
    the columns they lack, ``tables`` limits it to some tables); returns what changed."""
    tables = ctx.params.get("tables")
    if tables is not None and not (
        isinstance(tables, list) and all(isinstance(name, str) for name in tables)
    ):
        raise InvalidOperation(f"task {ctx.task.id!r}: params.tables must be a list of names")
    report = await maintain(
        ctx.engine,
        create_tables=bool(ctx.params.get("create_tables", False)),
        migrate=bool(ctx.params.get("migrate", False)),
        tables=tables,
        priority=ctx.priority,
    )
    result: dict[str, Any] = msgspec.to_builtins(report)
    return result


def builtin_actions() -> dict[str, Any]:
    """The data layer's built-in actions, which the engine registers with the core's."""
    return {"tables.maintain": maintain_action}
