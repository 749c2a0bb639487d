"""Tickets: operations accepted by ``engine.enqueue`` whose outcome is collected later."""

from __future__ import annotations

import anyio

from wf78_core.core.scheduling import Waiter
from wf78_core.definitions import Operation, Result

__all__ = ["Ticket"]


class Ticket:
    """A handle on one accepted operation; ``await ticket.result()`` gives its Result.

    While queued a ticket is a few hundred bytes and no coroutine: that is what lets the
    engine hold 100,000 operations in little memory (see benchmark B3).
    """

    __slots__ = ("_error", "_event", "_result", "context", "operation", "priority", "waiter")

    def __init__(self, operation: Operation, priority: int, context: dict[str, object]) -> None:
        self.operation = operation
        self.priority = priority
        self.context = context
        self.waiter: Waiter | None = None
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._event: anyio.Event | None = None  # made only if someone waits early

    def done(self) -> bool:
        return self._result is not None or self._error is not None

    async def result(self) -> Result:
        """The operation's Result; raises what the operation raised."""
        if not self.done():
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def set_result(self, result: Result | None, error: BaseException | None) -> None:
        """Settle the ticket (the dispatcher calls it once) and wake who waits."""
        self._result, self._error = result, error
        self.waiter = None
        if self._event is not None:
            self._event.set()
