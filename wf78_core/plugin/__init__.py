"""The plugin SDK: everything a data-source adapter, selection strategy, allocator, action or
auth plugin imports. Plugins import ``wf78_core`` or ``wf78_core.plugin``, nothing deeper.

Importing it loads no driver and no engine: only the leaf types, the config structs and pluggy.
"""

from __future__ import annotations

from wf78_core.config import ColumnType, Identity
from wf78_core.definitions import Operation, Result, TaskDefinition
from wf78_core.errors import (
    ConfigError,
    DataSourceError,
    IdempotencyConflict,
    InvalidOperation,
    OperationError,
    Problem,
    TaskTimeout,
    Wf78Error,
)
from wf78_core.events import TaskEvent
from wf78_core.idempotency import (
    check_replay,
    explicit_key,
    generated_ids,
    is_auto,
    recall,
    record,
)
from wf78_core.ids import snowflake_id
from wf78_core.plugin.datasource import (
    DataSource,
    DataSourceFactory,
    SourceInfo,
    SourceSpec,
    TableSchema,
    convert_options,
)
from wf78_core.plugin.drivers import MissingDriver, require_driver
from wf78_core.plugin.registry import Registry
from wf78_core.plugin.spans import batch_span, may_trace, operation_span
from wf78_core.plugin.spec import hookimpl
from wf78_core.plugin.types import Action, AgentInfo, Choice, MaybeAwaitable, Scope

__all__ = [
    "Action",
    "AgentInfo",
    "Choice",
    "ColumnType",
    "ConfigError",
    "DataSource",
    "DataSourceError",
    "DataSourceFactory",
    "IdempotencyConflict",
    "Identity",
    "InvalidOperation",
    "MaybeAwaitable",
    "MissingDriver",
    "Operation",
    "OperationError",
    "Problem",
    "Registry",
    "Result",
    "Scope",
    "SourceInfo",
    "SourceSpec",
    "TableSchema",
    "TaskDefinition",
    "TaskEvent",
    "TaskTimeout",
    "Wf78Error",
    "batch_span",
    "check_replay",
    "convert_options",
    "explicit_key",
    "generated_ids",
    "hookimpl",
    "is_auto",
    "may_trace",
    "operation_span",
    "recall",
    "record",
    "require_driver",
    "snowflake_id",
]
