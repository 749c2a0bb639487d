"""After a retryable first failure: retries with backoff on the same source, then each
fallback source once (the note's "degrade"). How one attempt's failure is reported, and one
attempt under a deadline, are here too: the dispatcher's first attempt uses them as well."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio

from wf78_core.core.admission import Counters
from wf78_core.core.agents import Agent
from wf78_core.core.retry import backoff
from wf78_core.core.routing import Router
from wf78_core.core.scheduling import Limit, Scheduler
from wf78_core.core.sources import Source, SourcePool
from wf78_core.core.tracing import noted
from wf78_core.definitions import Operation, Result, TaskDefinition
from wf78_core.errors import DataSourceError, NoDataSource, OperationError, TaskTimeout

__all__ = ["Fallbacks", "failed_as", "run_attempt"]


class Fallbacks:
    """The attempts after the first: retries on its source, then the fallback sources.

    ``tracer`` (set by the dispatcher once tracing is decided): each retry and fallback is
    an event of the operation's span.
    """

    def __init__(
        self,
        *,
        counters: Counters,
        pool: SourcePool,
        router: Router,
        scheduler: Scheduler,
        timeouts: Mapping[str, float | None],
        backoff_base: float,
        backoff_max: float,
    ) -> None:
        self.counters = counters
        self.tracer: Any = None
        self._pool = pool
        self._router = router
        self._scheduler = scheduler
        self._timeouts = timeouts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max

    def backoff(self, attempt: int) -> float:
        """The wait before retry number ``attempt + 1`` (the engine's backoff settings)."""
        return backoff(attempt, self._backoff_base, self._backoff_max)

    def budget(
        self, op: Operation, task: TaskDefinition | None, source: Source
    ) -> tuple[tuple[str, ...], int, float | None]:
        """The fallback sources, retries and per-attempt timeout of an operation."""
        if task is None:
            fallback, retry, timeout = op.fallback, op.retry or 0, op.timeout
        else:
            fallback = op.fallback or task.fallback
            retry = op.retry if op.retry is not None else task.retry
            timeout = op.timeout or task.timeout
        # engine.submit has no timeout unless the operation or its source sets one: a
        # cancel scope per operation would cost more than the dispatch itself.
        return fallback, retry, timeout or self._timeouts.get(source.name)

    async def _before_retry(self, source: Source, attempt: int) -> None:
        self.counters.retries += 1
        source.counters.retries += 1
        await anyio.sleep(self.backoff(attempt))

    def _degrade(self, name: str, action: str) -> Source | NoDataSource:
        """The fallback source ``name`` (counted), or why there is none."""
        try:
            source = self._pool.resolve(name, action)
        except NoDataSource as missing:
            return missing
        self.counters.fallbacks += 1
        source.counters.fallbacks += 1
        return source

    async def recover(
        self,
        op: Operation,
        level: int,
        task: TaskDefinition | None,
        outer: tuple[Limit, ...],
        source: Source,
        reason: str,
        error: OperationError,
        started: float,
    ) -> Result:
        """After a first failure ``error``: raised as it is (one attempt) when it is not
        retryable; else the remaining retries on ``source`` with backoff, then each
        fallback source once (the note's "degrade")."""
        if not error.retryable:
            error.attempts = 1
            raise error
        fallback, retry, timeout = self.budget(op, task, source)
        attempts = 1
        tried: tuple[str, ...] = ()
        plan = [(source, retry)] + [(None, 0)] * len(fallback)
        for index, (planned, tries) in enumerate(plan):
            if planned is None:
                degraded = self._degrade(fallback[index - 1], op.action)
                if isinstance(degraded, NoDataSource):
                    error = degraded
                    continue
                source, tries = degraded, 1
                reason = f"fallback after {tried[-1]} failed: {error}"
            for attempt in range(tries):
                if index == 0:
                    await self._before_retry(source, attempt)
                attempts += 1
                if self.tracer is not None:  # the retry or fallback, an event of the span
                    noted(index > 0, source.name, attempts, error)
                try:
                    value, agent, _ = await self._attempt(op, source, level, outer, timeout)
                except OperationError as failure:
                    error = failure
                    if not failure.retryable:
                        failure.attempts = attempts
                        raise
                    continue
                return Result(
                    value=value,
                    data_source=source.name,
                    source_type=source.type,
                    reason=reason,
                    agent=agent.id,
                    attempts=attempts,
                    fallback_from=tried,
                    elapsed=time.perf_counter() - started,
                )
            tried += (source.name,)
        raise _exhausted(error, attempts)

    async def _attempt(
        self,
        op: Operation,
        source: Source,
        level: int,
        outer: tuple[Limit, ...],
        seconds: float | None,
    ) -> tuple[Any, Agent, float]:
        """One more attempt on ``source`` (a retry or a fallback): value, agent, time."""
        agent, limits = await self._router.acquire(op, source, level, outer)
        began = time.perf_counter()
        try:
            value = await run_attempt(source, op, seconds)
        finally:
            self._scheduler.release(limits)
        elapsed = time.perf_counter() - began
        source.counters.ops += 1
        source.counters.latency.record(elapsed)
        agent.completed += 1
        return value, agent, elapsed


def _exhausted(error: OperationError | None, attempts: int) -> OperationError:
    """The last failure, once every attempt and fallback has been tried."""
    assert error is not None
    error.attempts = attempts
    error.exhausted = True  # type: ignore[attr-defined]
    return error


def failed_as(source: Source, failure: Exception) -> OperationError:
    """What an attempt's failure is reported as, counted against its source."""
    source.counters.errors += 1
    if isinstance(failure, OperationError):
        if failure.data_source is None:
            failure.data_source = source.name
        return failure
    return DataSourceError(
        f"{source.name!r} raised {type(failure).__name__}: {failure}",
        data_source=source.name,
    )


async def run_attempt(source: Source, op: Operation, seconds: float | None) -> Any:
    """One attempt of ``op`` on ``source`` within ``seconds`` (None: no deadline); its
    failure raised as the source's :class:`OperationError` (:func:`failed_as`)."""
    try:
        if seconds is None:
            return await source.adapter.execute(op)
        with anyio.CancelScope(deadline=anyio.current_time() + seconds):
            return await source.adapter.execute(op)
        raise TaskTimeout(
            f"{op.action} on {source.name!r} timed out after {seconds}s", data_source=source.name
        )
    except Exception as failure:
        reported = failed_as(source, failure)
        if reported is failure:
            raise
        raise reported from failure
