"""The exceptions wf78 raises; every one names what went wrong."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "DataSourceError",
    "IdempotencyConflict",
    "InvalidOperation",
    "NoAgentAvailable",
    "NoDataSource",
    "OperationError",
    "Overloaded",
    "Problem",
    "RateLimited",
    "RowNotFound",
    "RunCancelled",
    "SourceUnavailable",
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


class RateLimited(Wf78Error):
    """A ``[limits.<name>]`` refused the request (HTTP 429): over its rate, or its
    ``concurrent`` requests stayed in flight for longer than it waits. Retryable: trying
    again after ``retry_after`` seconds can pass. ``limit`` names the limit; ``policy``
    and ``remaining``/``reset`` describe it for the IETF ``RateLimit`` headers."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        retry_after: float,
        policy: str = "",
        state: str = "",
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after
        #: the ``RateLimit-Policy`` and ``RateLimit`` header values ("" when none)
        self.policy = policy
        self.state = state


class BackendUnavailable(Wf78Error):
    """The run backend (Redis) could not be reached; trying again after ``retry_after``
    seconds can help. ``run_id`` names a run whose start was sent but not confirmed: it
    may have been stored (look it up before starting it again); None when it was not."""

    def __init__(
        self, message: str, *, retry_after: float = 1.0, run_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.run_id = run_id


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


class RowNotFound(InvalidOperation):
    """The caller has no row ``row_id`` in ``table`` (HTTP 404). Said the same way whether
    another owner has such a row or nobody has: it tells nothing of other owners' ids."""

    def __init__(self, table: str, row_id: str) -> None:
        super().__init__(f"table {table!r} has no row {row_id!r} for this caller")
        self.table = table
        self.row_id = row_id


class IdempotencyConflict(InvalidOperation):
    """An idempotency key was sent again with another request than the one it was first
    used for (HTTP 422): a replay must repeat the first request exactly; a new request
    needs a new key. Never retried."""


class TaskTimeout(OperationError):
    """A task or operation ran past its timeout."""

    retryable = True


class NoDataSource(OperationError):
    """No configured data source can serve the operation."""


class NoAgentAvailable(OperationError):
    """Every agent able to serve the data source is out of rotation."""

    retryable = True


class SourceUnavailable(NoAgentAvailable):
    """The data source is out of rotation: it failed to open or its health check fails.
    ``data_source`` names it; trying again after ``retry_after`` seconds can help."""

    def __init__(self, message: str, *, data_source: str, retry_after: float = 1.0) -> None:
        super().__init__(message, data_source=data_source)
        self.retry_after = retry_after


class RunCancelled(Wf78Error):
    """The run was cancelled before the task could finish."""
