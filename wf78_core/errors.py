"""The exceptions wf78 raises; every one names what went wrong."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

__all__ = [
    "ConfigError",
    "DataSourceError",
    "InvalidOperation",
    "NoAgentAvailable",
    "NoDataSource",
    "OperationError",
    "Overloaded",
    "Problem",
    "RunCancelled",
    "TaskTimeout",
    "UnknownWorkflow",
    "Wf78Error",
]


class Wf78Error(Exception):
    """Base class of every error wf78 raises on purpose."""


class Problem(msgspec.Struct, frozen=True):
    """One configuration problem: where it is and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Wf78Error, ValueError):
    """A configuration or definition is invalid; ``problems`` lists every finding."""

    def __init__(self, problems: Iterable[Problem] | str, path: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem(path, problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Overloaded(Wf78Error):
    """The engine's queue stayed full for longer than the caller may wait."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownWorkflow(Wf78Error, KeyError):
    """No workflow (or run) has that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown workflow"


class OperationError(Wf78Error):
    """A data operation failed. ``retryable`` says whether trying again can help;
    ``conflict`` that the source refused a write because the key exists or a constraint
    holds (HTTP 409)."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        data_source: str | None = None,
        retryable: bool | None = None,
        conflict: bool = False,
    ) -> None:
        super().__init__(message)
        self.data_source = data_source
        self.conflict = conflict
        if retryable is not None:
            self.retryable = retryable
        self.attempts = 0


class DataSourceError(OperationError):
    """The data source refused or failed; adapters map driver errors to this."""


class InvalidOperation(OperationError):
    """The operation itself is wrong (unknown table or column, missing field); never retried."""


class TaskTimeout(OperationError):
    """A task or operation ran past its timeout."""

    retryable = True


class NoDataSource(OperationError):
    """No configured data source can serve the operation."""


class NoAgentAvailable(OperationError):
    """Every agent able to serve the data source is out of rotation."""

    retryable = True


class RunCancelled(Wf78Error):
    """The run was cancelled before the task could finish."""
