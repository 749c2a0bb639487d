"""``memory``: an in-process data source for tests and benchmarks.

It keeps rows in dictionaries and answers at once, so it measures the engine alone. It
knows no table's schema, so its rows are keyed by id alone, owned tables too (the SQL,
Redis and Elasticsearch sources key those by owner and id).
Options: ``latency`` (seconds each operation sleeps, to make work overlap in tests).
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import msgspec

from wf78_core.plugin import (
    DataSourceError,
    DataSourceFactory,
    InvalidOperation,
    Operation,
    Registry,
    SourceSpec,
    hookimpl,
    snowflake_id,
)

__all__ = ["MemorySource", "wf78_register_datasources"]

# The actions whose outbox entries are kept (see wf78_core.data.mirrors).
_OUTBOX_WRITES = frozenset(
    {"add", "add_many", "upsert", "update", "update_many", "delete", "delete_many"}
)


class MemorySource:
    """Rows in dicts keyed by id; a key-value cache beside them."""

    class Options(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
        latency: float = 0.0
        concurrency: int = 100_000

    actions = frozenset(
        {
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
            "create_table",
            "drop_table",
            "list_shards",
            "cache_get",
            "cache_set",
            "cache_delete",
            "incr",
        }
    )
    outbox_actions = frozenset({"outbox_fetch", "outbox_ack", "outbox_count"})

    def __init__(self, spec: SourceSpec) -> None:
        options = spec.options
        if isinstance(options, dict):
            options = msgspec.convert(options, self.Options)
        self.name = spec.name
        self.latency = options.latency
        self.concurrency = options.concurrency
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self.cache: dict[str, Any] = {}
        # The transactional outbox of mirrored tables: entry id -> entry (insertion order).
        self.outbox: dict[int, dict[str, Any]] = {}
        self._outbox_id = 0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self.tables.clear()
        self.cache.clear()
        self.outbox.clear()

    async def health(self) -> None:
        return None

    async def execute(self, op: Operation) -> Any:
        if self.latency:
            await anyio.sleep(self.latency)
        if op.action in self.outbox_actions:
            return self._outbox_action(op)
        if op.outbox and op.action not in _OUTBOX_WRITES:
            raise InvalidOperation(
                f"{op.action} cannot carry outbox entries", data_source=self.name
            )
        result = self._execute(op)
        # No await since the write: its outbox entries are kept in the same step, or not at all.
        if op.outbox and (result if isinstance(result, int) else True):
            for entry in op.outbox:
                self._outbox_id += 1
                self.outbox[self._outbox_id] = dict(entry)
        return result

    def _outbox_action(self, op: Operation) -> Any:
        mirror = (op.where or {}).get("mirror")
        waiting = [
            (entry_id, entry)
            for entry_id, entry in self.outbox.items()
            if mirror is None or entry.get("mirror") == mirror
        ]
        if op.action == "outbox_count":
            return len(waiting)
        if op.action == "outbox_fetch":
            limit = 100 if op.limit is None else op.limit
            return [{"id": entry_id, "payload": dict(entry)} for entry_id, entry in waiting[:limit]]
        return sum(self.outbox.pop(entry_id, None) is not None for entry_id in op.value or [])

    def _execute(self, op: Operation) -> Any:
        action = op.action
        if action == "noop":
            return None
        if action.startswith("cache_") or action == "incr":
            return self._cache(op)
        if not op.table:
            raise InvalidOperation(f"{action} needs a table", data_source=self.name)
        if action == "list_shards":
            shape = re.compile(re.escape(op.table) + r"_([0-9]{1,14})")
            shards = (shape.fullmatch(name) for name in self.tables)
            return sorted(match.group(1) for match in shards if match)
        name = op.table if op.shard is None else f"{op.table}_{op.shard}"
        if action == "create_table":
            created = name not in self.tables
            self.tables.setdefault(name, {})
            return created
        if action == "drop_table":
            if op.shard is None:
                raise InvalidOperation("drop_table needs a shard", data_source=self.name)
            return self.tables.pop(name, None) is not None
        rows = self.tables.setdefault(name, {})
        if action == "add":
            row = dict(op.values or {})
            row.setdefault("id", snowflake_id())
            if row["id"] in rows:
                raise DataSourceError(
                    f"duplicate id {row['id']!r}", data_source=self.name, conflict=True
                )
            rows[row["id"]] = row
            return row["id"]
        if action == "add_many":
            ids = []
            inserted = 0
            for values in op.rows or []:
                row = dict(values)
                row.setdefault("id", snowflake_id())
                if op.conflict == "ignore" and row["id"] in rows:
                    continue
                rows[row["id"]] = row
                ids.append(row["id"])
                inserted += 1
            return inserted if op.conflict == "ignore" else ids
        if action == "update_many":
            changed = 0
            for values in op.rows or []:
                target = rows.get(str(values.get("id")))
                if target is not None and _matches(target, op.where or {}):
                    target.update(values)
                    changed += 1
            return changed
        if action == "upsert":
            row = dict(op.values or {})
            if "id" not in row:
                raise InvalidOperation("upsert needs values.id", data_source=self.name)
            rows.setdefault(row["id"], {}).update(row)
            return row["id"]
        matches = [row for row in rows.values() if _matches(row, op.where or {})]
        if action == "count":
            return len(matches)
        if action == "get":
            for entry in reversed(op.order or []):
                column, _, direction = entry.removeprefix("-").partition(" ")
                descending = entry.startswith("-") or direction.strip().lower() == "desc"
                matches.sort(key=lambda row: _sort_key(row.get(column)), reverse=descending)
            end = None if op.limit is None else op.offset + op.limit
            found = matches[op.offset : end]
            if op.columns:
                found = [{c: row.get(c) for c in op.columns} for row in found]
            return [dict(row) for row in found]
        if not op.where:
            raise InvalidOperation(f"{action} needs a where filter", data_source=self.name)
        if action == "update":
            for row in matches:
                row.update(op.values or {})
            return len(matches)
        if action in ("delete", "delete_many"):
            for row in matches:
                del rows[row["id"]]
            return len(matches)
        raise InvalidOperation(f"memory source cannot {action!r}", data_source=self.name)

    def _cache(self, op: Operation) -> Any:
        if op.key is None:
            raise InvalidOperation(f"{op.action} needs a key", data_source=self.name)
        if op.action == "cache_get":
            return self.cache.get(op.key)
        if op.action == "cache_set":
            self.cache[op.key] = op.value  # ttl is not kept: entries live until deleted
            return True
        if op.action == "incr":
            total = int(self.cache.get(op.key) or 0) + (1 if op.value is None else int(op.value))
            self.cache[op.key] = total
            return total
        return self.cache.pop(op.key, None) is not None


def _sort_key(value: Any) -> tuple[bool, Any]:
    return (value is not None, value)  # NULLs first, as SQL sorts them ascending


def _matches(row: dict[str, Any], where: dict[str, Any]) -> bool:
    for column, wanted in where.items():
        value = row.get(column)
        if isinstance(wanted, list):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


@hookimpl(trylast=True)
def wf78_register_datasources(registry: Registry[DataSourceFactory | str]) -> None:
    registry.add("memory", MemorySource, default=True)
