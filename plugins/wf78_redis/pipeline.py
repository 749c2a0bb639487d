"""Auto-pipelining: commands issued together go to Redis in one round trip.

Callers put a :class:`Call` on a bounded stream and wait for its ``done`` event. The loop
takes the first call, then every call already waiting (up to ``max_pipeline``), sends them
all in one non-transactional pipeline and hands each caller its own reply or error: one
failing command fails only its caller. While a pipeline is in flight the next callers queue
up, so the busier the source, the more commands share a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from wf78_core.errors import DataSourceError

from .errors import closed_error, map_error
from .scripts import Script

__all__ = ["AutoPipeline", "Call"]

Arg = str | bytes | int | float


@dataclass(eq=False)
class Call:
    """One caller's command and, once sent, its reply or error.

    With a ``script`` the command is EVALSHA of it and ``args`` are its numkeys, keys and
    arguments; otherwise ``args`` is the whole command.
    """

    args: tuple[Arg, ...]
    script: Script | None = None
    reply: Any = None
    error: DataSourceError | None = None
    settled: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def command(self) -> tuple[Arg, ...]:
        if self.script is None:
            return self.args
        return ("EVALSHA", self.script.sha, *self.args)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply


class AutoPipeline:
    """Sends calls in shared pipelines while :meth:`run` runs, else each in its own.

    Without a running loop (``run`` never started, or already stopped) :meth:`call` sends
    its command at once in a pipeline of one, so direct use and scripts need no task group.
    ``pipelines`` counts round trips sent, ``commands`` the commands they carried.
    """

    def __init__(self, client: Redis, *, source: str, max_pipeline: int, queue_size: int) -> None:
        self.client = client
        self.source = source
        self.max_pipeline = max_pipeline
        self.queue_size = queue_size
        self.pipelines = 0
        self.commands = 0
        self._send: MemoryObjectSendStream[Call] | None = None

    @property
    def running(self) -> bool:
        return self._send is not None

    async def call(self, call: Call) -> Any:
        """Send ``call`` and return its reply or raise its DataSourceError.

        A caller cancelled while waiting leaves its call queued: it may still run.
        """
        send = self._send
        if send is None:
            await self._flush([call])
            return call.outcome()
        try:
            await send.send(call)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise closed_error(self.source) from None
        await call.done.wait()
        return call.outcome()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The pipelining loop, until cancelled; then queued calls fail as retryable."""
        if self._send is not None:
            raise RuntimeError(f"the pipeline of redis source {self.source!r} is already running")
        send, receive = anyio.create_memory_object_stream[Call](self.queue_size)
        self._send = send
        try:
            task_status.started()
            while True:
                batch = [await receive.receive()]
                while len(batch) < self.max_pipeline:
                    try:
                        batch.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                # Calls taken from the stream are answered even when shutdown cancels us.
                with anyio.CancelScope(shield=True):
                    await self._flush(batch)
        finally:
            self._send = None
            # No await from here on, so no sender can slip in between draining and closing;
            # draining also takes the calls of senders still blocked on a full stream.
            while True:
                try:
                    call = receive.receive_nowait()
                except anyio.WouldBlock:
                    break
                call.error = closed_error(self.source)
                call.done.set()
            send.close()
            receive.close()

    async def _flush(self, calls: list[Call]) -> None:
        """Send ``calls`` in one pipeline; afterwards every call has a reply or an error."""
        try:
            missing: list[Call] = []
            for call, reply in zip(calls, await self._send_pipeline(calls), strict=True):
                if isinstance(reply, NoScriptError) and call.script is not None:
                    missing.append(call)
                else:
                    self._settle(call, reply)
            if missing:
                # Redis restarted or flushed its script cache: load the scripts, send again.
                for script in {call.script for call in missing if call.script is not None}:
                    await self.client.script_load(script.source)
                for call, reply in zip(missing, await self._send_pipeline(missing), strict=True):
                    self._settle(call, reply)
        except Exception as error:
            # The round trip itself failed: nobody knows which commands ran.
            for call in calls:
                if not call.settled:
                    call.error = map_error(error, self.source)
                    call.settled = True
        finally:
            for call in calls:
                call.done.set()

    async def _send_pipeline(self, calls: list[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*call.command)
        self.pipelines += 1
        self.commands += len(calls)
        return list(await pipe.execute(raise_on_error=False))

    def _settle(self, call: Call, reply: Any) -> None:
        if isinstance(reply, Exception):  # a ResponseError of this command alone
            call.error = map_error(reply, self.source)
        else:
            call.reply = reply
        call.settled = True
