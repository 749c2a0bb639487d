"""wf78: a workflow engine for data operations that installs as ASGI middleware."""

from __future__ import annotations

from .actions import TaskContext
from .agents import Agent
from .config import Config, Identity, load_config
from .context import current
from .definitions import Operation, Result, TaskDefinition, WorkflowDefinition
from .engine import Engine
from .errors import (
    ConfigError,
    DataSourceError,
    InvalidOperation,
    NoAgentAvailable,
    NoDataSource,
    OperationError,
    Overloaded,
    TaskTimeout,
    UnknownWorkflow,
    Wf78Error,
)
from .events import TaskEvent
from .hookspecs import hookimpl
from .middleware import Wf78Middleware
from .runs import Run, TaskRun
from .stats import EngineStats
from .table import Table
from .tickets import Ticket

__all__ = [
    "Agent",
    "Config",
    "ConfigError",
    "DataSourceError",
    "Engine",
    "EngineStats",
    "Identity",
    "InvalidOperation",
    "NoAgentAvailable",
    "NoDataSource",
    "Operation",
    "OperationError",
    "Overloaded",
    "Result",
    "Run",
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
