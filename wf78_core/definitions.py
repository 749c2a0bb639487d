"""The msgspec structs users write and read: workflows, tasks, operations, results."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import msgspec

__all__ = [
    "Conflict",
    "Kind",
    "Latency",
    "Operation",
    "Result",
    "TaskDefinition",
    "Trigger",
    "Volume",
    "WorkflowDefinition",
]

Trigger = Literal["event", "schedule", "api"]
Kind = Literal["core", "cache", "temp", "history", "log", "search"]
Latency = Literal["low", "normal", "high"]
Volume = Literal["small", "medium", "large"]
# What add_many does with a row whose id already exists: fail the write, or skip the row.
Conflict = Literal["error", "ignore"]
_SHARD = re.compile(r"[0-9]{1,14}")
# The longest idempotency key an operation carries (see wf78_core.idempotency).
MAX_IDEMPOTENCY_KEY = 200


class TaskDefinition(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One step of a workflow (note 2.2.1)."""

    id: str
    name: str = ""
    action: str = "datasource.execute"
    depends_on: tuple[str, ...] = ()
    timeout: float | None = None
    retry: int = 0
    data_source: str | None = None
    auto_select: bool = True
    params: dict[str, Any] = {}
    fallback: tuple[str, ...] = ()


class WorkflowDefinition(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A named DAG of tasks with a priority (smaller = more urgent) and a concurrency cap.

    ``concurrency_key`` (``"context.<field>"``) with ``max_per_key`` caps the running runs
    per value of that context field (see :mod:`wf78_core.core.concurrency_keys`).
    """

    id: str
    name: str = ""
    priority: int = 1
    tasks: tuple[TaskDefinition, ...] = ()
    max_concurrent: int = 10
    trigger: Trigger = "api"
    event: str | None = None
    schedule: str | float | None = None
    concurrency_key: str | None = None
    max_per_key: int | None = None


class Operation(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One data operation: what to do, on what, and hints for choosing where.

    ``action`` is one of the adapter actions (``add``, ``add_many``, ``get``, ``update``,
    ``upsert``, ``delete``, ``delete_many``, ``execute`` on SQL sources; ``cache_get``,
    ``cache_set``, ``cache_delete``, ``incr`` on caches; ``search`` on search engines).
    ``data_source`` names a configured source or a source type and always wins; otherwise
    ``kind``, ``latency`` and ``volume`` (or the table's configured kind) guide selection.

    SQL sources also take ``count`` (rows matching ``where``), ``update_many`` (``rows``
    each with its ``id``, ``where`` as extra filters, one statement), ``create_table``,
    ``drop_table`` and ``list_shards``. ``conflict = "ignore"`` makes ``add_many`` skip
    rows whose id exists and return how many it inserted. ``shard`` (digits, such as
    ``"20250130"``) addresses the physical table ``<table>_<shard>`` of a sharded table.

    ``outbox`` (writes of a table with mirrors, see :mod:`wf78_core.mirrors`): small JSON
    dicts ``{mirror, action, table, id, ...}`` that a source able to keep an outbox stores in
    the write's own transaction, so they commit or roll back with it. A write that counts
    rows stores them only when it changed some.

    ``idempotency_key`` (1 to 200 characters) makes a write safe to run again: a replay
    with the same key returns the first result instead of writing twice. Keys starting
    with ``~`` are the engine's own, generated before a write's first attempt; see
    :mod:`wf78_core.idempotency`. ``idempotency_fingerprint`` says what the key's request
    asked for (``Table`` methods set it): a source that records keys refuses a replay with
    another fingerprint (:class:`~wf78_core.errors.IdempotencyConflict`, HTTP 422).
    """

    action: str
    table: str | None = None
    values: dict[str, Any] | None = None
    rows: list[dict[str, Any]] | None = None
    where: dict[str, Any] | None = None
    columns: list[str] | None = None
    order: list[str] | None = None
    limit: int | None = None
    offset: int = 0
    sql: str | None = None
    params: list[Any] | dict[str, Any] | None = None
    key: str | None = None
    value: Any = None
    ttl: float | None = None
    data_source: str | None = None
    kind: Kind | None = None
    latency: Latency | None = None
    volume: Volume | None = None
    timeout: float | None = None
    retry: int | None = None
    fallback: tuple[str, ...] = ()
    conflict: Conflict = "error"
    shard: str | None = None
    outbox: list[dict[str, Any]] | None = None
    idempotency_key: str | None = None
    idempotency_fingerprint: str | None = None

    def __post_init__(self) -> None:
        key = self.idempotency_key
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise ValueError(
                f"idempotency_key must have 1 to {MAX_IDEMPOTENCY_KEY} characters, got {len(key)}"
            )
        if self.shard is not None and not _SHARD.fullmatch(self.shard):
            raise ValueError(f"shard must be 1 to 14 digits, got {self.shard!r}")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be positive and finite, got {self.timeout}")
        if self.retry is not None and self.retry < 0:
            raise ValueError(f"retry must be >= 0, got {self.retry}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")


class Result(msgspec.Struct, kw_only=True, frozen=True):
    """The outcome of one operation: its value and who served it, and why."""

    value: Any = None
    data_source: str
    source_type: str
    reason: str
    agent: str | None = None
    attempts: int = 1
    fallback_from: tuple[str, ...] = ()
    elapsed: float = 0.0
