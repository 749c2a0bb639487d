"""Sharded tables: one physical table per UTC day or month, and the maintenance that keeps them.

A table configured with ``sharding = {type = "daily"|"monthly", retention_days, ahead}`` is
stored as ``<table>_YYYYMMDD`` or ``<table>_YYYYMM`` (as koa78 named them); the declared
table's columns are every shard's columns. Writes go to the shard of "now"; reads take the
shard of today or fan out over a date range (:class:`wf78_core.data.table.Table`).

Creating and dropping shards is not work for the insert path: :func:`maintain` (the built-in
action ``tables.maintain``, run once when the engine starts, by the ``wf78.maintenance``
workflow every hour and by ``wf78 maintain``) creates today's shard and the next ``ahead``
ones and drops shards whose whole period ended more than ``retention_days`` days ago.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import msgspec

from wf78_core.config import TableConfig
from wf78_core.core.actions import TaskContext
from wf78_core.data.ports import EnginePort
from wf78_core.definitions import Operation
from wf78_core.errors import ConfigError, InvalidOperation

__all__ = [
    "SHARD_ACTIONS",
    "MaintenanceReport",
    "ShardType",
    "TableChange",
    "builtin_actions",
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


class MaintenanceReport(msgspec.Struct, kw_only=True):
    """What :func:`maintain` did: shards created and dropped, missing tables created."""

    created: list[TableChange] = []
    dropped: list[TableChange] = []
    tables_created: list[TableChange] = []


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
) -> MaintenanceReport:
    """Create upcoming shards and drop expired ones for every sharded table (or ``tables``);
    with ``create_tables`` also create missing declared tables that are not sharded.

    Every step is an operation submitted to the engine. ``today`` defaults to :func:`now`.
    """
    day = today if today is not None else to_date(now())
    report = MaintenanceReport()
    names = list(engine.config.tables) if tables is None else list(tables)

    async def perform(action: str, name: str, source: str, shard: str | None = None) -> Any:
        op = Operation(action=action, table=name, shard=shard, data_source=source)
        return (await engine.submit(op, priority=priority)).value

    for name in names:
        table = engine.config.tables.get(name)
        if table is None:
            raise InvalidOperation(f"unknown table {name!r}")
        sharding = table.sharding
        if sharding is None:
            if create_tables:
                for source in _targets(engine, name, table, sharded=False):
                    if await perform("create_table", name, source):
                        report.tables_created.append(TableChange(source, name))
            continue
        for source in _targets(engine, name, table, sharded=True):
            keep = upcoming(sharding.type, day, sharding.ahead)
            for suffix in keep:
                if await perform("create_table", name, source, suffix):
                    report.created.append(TableChange(source, f"{name}_{suffix}"))
            for suffix in await perform("list_shards", name, source):
                if suffix in keep or not is_expired(
                    sharding.type, suffix, day, sharding.retention_days
                ):
                    continue
                if await perform("drop_table", name, source, suffix):
                    report.dropped.append(TableChange(source, f"{name}_{suffix}"))
    return report


async def maintain_action(ctx: TaskContext) -> dict[str, Any]:
    """``tables.maintain``: create upcoming shards and drop expired ones (params
    ``create_tables = true`` also creates missing declared tables, ``tables`` limits it
    to some tables); returns what changed."""
    tables = ctx.params.get("tables")
    if tables is not None and not (
        isinstance(tables, list) and all(isinstance(name, str) for name in tables)
    ):
        raise InvalidOperation(f"task {ctx.task.id!r}: params.tables must be a list of names")
    report = await maintain(
        ctx.engine,
        create_tables=bool(ctx.params.get("create_tables", False)),
        tables=tables,
        priority=ctx.priority,
    )
    result: dict[str, Any] = msgspec.to_builtins(report)
    return result


def builtin_actions() -> dict[str, Any]:
    """The data layer's built-in actions, which the engine registers with the core's."""
    return {"tables.maintain": maintain_action}
