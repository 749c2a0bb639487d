"""wf78: a workflow engine for data operations that installs as ASGI middleware."""

from __future__ import annotations

from wf78_core.config import Config, Identity, load_config
from wf78_core.core.actions import TaskContext
from wf78_core.core.agents import Agent
from wf78_core.core.runs import Run, TaskRun
from wf78_core.core.stats import EngineStats
from wf78_core.core.tickets import Ticket
from wf78_core.data.table import Table
from wf78_core.definitions import Operation, Result, TaskDefinition, WorkflowDefinition
from wf78_core.engine import Engine
from wf78_core.errors import (
    BackendUnavailable,
    ConfigError,
    DataSourceError,
    IdempotencyConflict,
    InvalidOperation,
    NoAgentAvailable,
    NoDataSource,
    OperationError,
    Overloaded,
    RateLimited,
    RowNotFound,
    SourceUnavailable,
    TaskTimeout,
    UnknownWorkflow,
    Wf78Error,
)
from wf78_core.events import TaskEvent
from wf78_core.http.context import current
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.plugin.spec import hookimpl

__all__ = [
    "Agent",
    "BackendUnavailable",
    "Config",
    "ConfigError",
    "DataSourceError",
    "Engine",
    "EngineStats",
    "IdempotencyConflict",
    "Identity",
    "InvalidOperation",
    "NoAgentAvailable",
    "NoDataSource",
    "Operation",
    "OperationError",
    "Overloaded",
    "RateLimited",
    "Result",
    "RowNotFound",
    "Run",
    "SourceUnavailable",
    "Table",
    "TaskContext",
    "TaskDefinition",
    "TaskEvent",
    "TaskRun",
    "TaskTimeout",
    "Ticket",
    "UnknownWorkflow",
    "Wf78Error",
    "Wf78Middleware",
    "WorkflowDefinition",
    "current",
    "hookimpl",
    "load_config",
]
