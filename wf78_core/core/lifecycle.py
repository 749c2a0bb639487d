"""Whether the engine accepts work, and the task group its work runs in."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from wf78_core.errors import Wf78Error

__all__ = ["Lifecycle", "close_stack", "require_asyncio"]


def _running_library() -> str:
    """The async library running this task, as far as wf78 can tell without asking asyncio."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    return "an event loop other than asyncio's"


def require_asyncio() -> None:
    """Refuse, with a clear :class:`Wf78Error`, to run under anything but asyncio (anyio's
    trio backend: Starlette's ``TestClient(backend="trio")``, hypercorn's trio workers)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise Wf78Error(
            f"wf78 needs asyncio, and this runs on {_running_library()}: the data-source "
            "drivers (aiosqlite for the embedded SQLite default, aiomysql, redis.asyncio, "
            "the async Elasticsearch client) are asyncio libraries. Run the server on "
            "asyncio: uvicorn, hypercorn -k asyncio, granian --loop asyncio, "
            'TestClient(app) (backend="asyncio", its default)'
        ) from None


class Lifecycle:
    """Shared by the parts that accept work: open, closing (draining) or closed."""

    __slots__ = ("_idle", "closing", "open", "started", "work")

    def __init__(self) -> None:
        self.open = False
        self.closing = False
        # Whether a start-up ever began: the next one is a restart.
        self.started = False
        self.work: TaskGroup | None = None
        self._idle = anyio.Event()

    def begin(self) -> bool:
        """A start-up begins (on asyncio only, see :func:`require_asyncio`); True when it
        is a restart, on this event loop or another: what the last start bound to its
        loop must then be made anew."""
        require_asyncio()
        again, self.started = self.started, True
        self._idle = anyio.Event()
        return again

    @property
    def accepting(self) -> bool:
        return self.open and not self.closing

    def check(self) -> None:
        if not self.open or self.closing:
            raise Wf78Error("the engine is not running: use `async with engine:` first")

    def group(self) -> TaskGroup:
        """The task group accepted work runs in (while open)."""
        work = self.work
        if work is None:
            raise Wf78Error("the engine is not running: use `async with engine:` first")
        return work

    def work_done(self) -> None:
        """A piece of work ended: a draining engine looks again whether it is idle."""
        if self.closing:
            self._idle.set()

    async def next_done(self) -> None:
        """Wait until some work ends (while draining)."""
        self._idle = anyio.Event()
        await self._idle.wait()


def _holds_only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """Whether ``group``, and the groups inside it, hold ``error`` and nothing else."""
    return all(
        inner is error or (isinstance(inner, BaseExceptionGroup) and _holds_only(inner, error))
        for inner in group.exceptions
    )


async def close_stack(
    stack: AsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    """Close ``stack`` as ``async with`` leaves it. Task groups in it wrap the body's
    exception ``exc`` in exception groups: the caller gets the body's own back, as itself
    (``except KeyError`` catches a ``KeyError``); any other failure is raised as it is."""
    try:
        return await stack.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        if exc is None or not _holds_only(group, exc):
            raise
        body = exc
    raise body.with_traceback(tb)
