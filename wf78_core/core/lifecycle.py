"""Whether the engine accepts work, and the task group its work runs in."""

from __future__ import annotations

import anyio
from anyio.abc import TaskGroup

from wf78_core.errors import Wf78Error

__all__ = ["Lifecycle"]


class Lifecycle:
    """Shared by the parts that accept work: open, closing (draining) or closed."""

    __slots__ = ("_idle", "closing", "open", "work")

    def __init__(self) -> None:
        self.open = False
        self.closing = False
        self.work: TaskGroup | None = None
        self._idle = anyio.Event()

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
