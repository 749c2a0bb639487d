"""Auto-pipelining: commands issued together go to Redis in one round trip.

While :meth:`AutoPipeline.run` runs, one round trip is in flight at a time, on a connection
the pipeline keeps. A caller that finds nothing in flight and nothing queued sends its
command at once, itself (a lone command pays no hand-off to the loop task). Callers that
find a round trip in flight add their command, packed, to the open batch (at most
``max_pipeline`` commands; at most ``queue_size`` wait in all, beyond that callers wait for
room) and wait for their reply. When the round trip in flight ends, the loop sends the
oldest batch as one pipeline and hands each caller its own reply or error: one failing
command fails only its caller. Round trips never overlap, so Redis runs commands in the
order they were issued; the busier the source, the more commands share a round trip.

A batch costs its callers no task, event or stream hand-off of their own: each adds its
packed command to a list and awaits a bare future that the loop sets with its reply (an
``asyncio.Event`` would make the same future per waiter, behind two more frames).

The pipeline writes the packed commands (hiredis) on the connection and reads the replies
straight from redis-py's hiredis reader (RESP2 or RESP3), as ``read_response`` would but
under one timeout per round trip instead of one per reply; a connection without that parser
gets its replies through ``read_response`` itself. A round trip that fails (reset, timeout,
cancellation) closes its connection, so replies it still owes never reach the next user;
the connection reconnects on its next use.

With tracing on, a command that joins a batch notes its operation's span
(:func:`~wf78_core.plugin.operation_span`), and the loop sends the batch inside a span
``PIPELINE {source}`` (:func:`~wf78_core.plugin.batch_span`): a root span linked to the span
of every operation whose command it carried, with ``wf78.batch.size`` (its commands). A lone
command, sent by its own caller, runs under its operation's span and makes no batch span.
Whether spans may record is decided once, when the pipeline is made (as the engine decides
when it is built): without a tracer provider then, a queued command costs one attribute
test and a batch one more.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wf78_core.plugin import batch_span, may_trace, operation_span

from .errors import closed_error, map_error
from .scripts import Script

__all__ = ["Arg", "AutoPipeline"]

Arg = str | bytes | int | float
Command = tuple[Arg, ...]
Packer = Callable[[Command], bytes]

_hiredis_pack: Packer | None
try:  # the redis extra brings hiredis, but the wire format does not depend on it
    from hiredis import pack_command as _hiredis_pack  # type: ignore[assignment]
except ImportError:  # pragma: no cover
    _hiredis_pack = None
# redis-py's hiredis parser, whose reader the exchange reads from; a redis-py without it
# (or where it changed) gets its replies through read_response.
_HIREDIS_PARSER: type | None
try:
    from redis._parsers import hiredis as _redis_hiredis

    _HIREDIS_PARSER = getattr(_redis_hiredis, "_AsyncHiredisParser", None)
    _NOT_ENOUGH_DATA: object = getattr(_redis_hiredis, "NOT_ENOUGH_DATA", None)
except ImportError:  # pragma: no cover
    _HIREDIS_PARSER = _NOT_ENOUGH_DATA = None
if _NOT_ENOUGH_DATA is None:  # pragma: no cover
    _HIREDIS_PARSER = None


class _Batch:
    """Commands sent in one round trip, and the future of each command's caller."""

    __slots__ = ("packed", "scripts", "spans", "waiters")

    def __init__(self) -> None:
        self.packed: list[bytes] = []
        self.waiters: list[asyncio.Future[Any]] = []
        self.scripts: dict[int, Script] | None = None
        # the operation span of each command (None: untraced); None until one is traced
        self.spans: list[Any] | None = None


# The reply of a command the pipeline stopped before sending.
_REFUSED = object()


class AutoPipeline:
    """Sends commands in shared pipelines while :meth:`run` runs, else each in its own.

    Without a running loop (``run`` never started, or already stopped) :meth:`call` sends
    its command at once on a connection of the pool, so direct use and scripts need no task
    group. ``pipelines`` counts round trips sent, ``commands`` the commands they carried.
    """

    def __init__(self, client: Redis, *, source: str, max_pipeline: int, queue_size: int) -> None:
        self.client = client
        self.pool: Any = client.connection_pool
        self.source = source
        self.max_pipeline = max_pipeline
        self.queue_size = queue_size
        self.pipelines = 0
        self.commands = 0
        self._pack = _packer(self.pool.connection_kwargs)
        self._traced = may_trace()  # else no command looks for its operation's span
        self._running = False
        self._busy = False  # a round trip on the kept connection is in flight
        self._kept: Any = None  # the connection of round trips while ``run`` runs
        self._batches: deque[_Batch] = deque()
        self._queued = 0
        self._wake = anyio.Event()
        self._room: anyio.Event | None = None

    @property
    def running(self) -> bool:
        return self._running

    async def call(self, command: Command, script: Script | None = None) -> Any:
        """Send ``command`` and return its reply or raise its DataSourceError.

        With a ``script``, ``command`` is EVALSHA of it: on NOSCRIPT the script is loaded
        and the command sent again. A caller cancelled while its command waits in a batch
        leaves it queued: it may still run.
        """
        return self.outcome(await self.send(command, script))

    def send(self, command: Command, script: Script | None = None) -> Awaitable[Any]:
        """What :meth:`call` does, in two steps for hot paths: an awaitable of the raw reply
        (an error as an exception object), which :meth:`outcome` turns into the result.

        A queued command's awaitable is the caller's own future, set by the loop: nothing
        stands between the caller and its reply. Raises DataSourceError for a command that
        cannot be packed.
        """
        try:
            packed = self._pack(command)
        except Exception as error:  # a value no Redis command can carry
            raise map_error(error, self.source) from error
        if not self._running:
            return self._alone(packed, script)
        if not self._busy and not self._batches:
            return self._lone(packed, script)
        if self._queued >= self.queue_size:
            return self._queue_with_room(packed, script)
        return self._queue(packed, script)

    def outcome(self, reply: Any) -> Any:
        """The result of a reply from :meth:`send`; raises the command's DataSourceError."""
        if isinstance(reply, Exception):  # an error reply of this command, or a failed trip
            raise map_error(reply, self.source)
        if reply is _REFUSED:
            raise closed_error(self.source)
        return reply

    def _queue(self, packed: bytes, script: Script | None) -> asyncio.Future[Any]:
        batches = self._batches
        if not batches or len(batches[-1].packed) >= self.max_pipeline:
            batches.append(_Batch())
            self._wake.set()  # the loop sleeps only while no batch waits (or one is in flight)
        batch = batches[-1]
        if script is not None:
            if batch.scripts is None:
                batch.scripts = {}
            batch.scripts[len(batch.packed)] = script
        if self._traced:
            span = operation_span()  # the caller's, linked from the batch's span
            if batch.spans is not None:
                batch.spans.append(span)
            elif span is not None:
                batch.spans = [None] * len(batch.packed)
                batch.spans.append(span)
        batch.packed.append(packed)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        self._queued += 1
        return waiter

    async def _queue_with_room(self, packed: bytes, script: Script | None) -> Any:
        while self._queued >= self.queue_size:  # bounded: wait for the loop to take a batch
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
            if not self._running:
                return _REFUSED
        return await self._queue(packed, script)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The pipelining loop, until cancelled; then queued calls fail as retryable."""
        if self._running:
            raise RuntimeError(f"the pipeline of redis source {self.source!r} is already running")
        self._running = True
        batches = self._batches
        try:
            task_status.started()
            while True:
                if not batches or self._busy:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                await anyio.lowlevel.checkpoint_if_cancelled()  # the batches are shielded
                batch = batches.popleft()
                self._queued -= len(batch.packed)
                if self._room is not None:
                    self._room.set()
                    self._room = None
                # A batch taken is answered even when shutdown cancels us.
                self._busy = True
                try:
                    with anyio.CancelScope(shield=True):
                        if batch.spans is None:  # none of its commands is traced
                            replies = await self._answer(batch.packed, batch.scripts, kept=True)
                        else:
                            replies = await self._traced_answer(batch, batch.spans)
                finally:
                    self._busy = False
                for waiter, reply in zip(batch.waiters, replies, strict=True):
                    if not waiter.done():  # else its caller was cancelled
                        waiter.set_result(reply)
        finally:
            self._running = False
            # No await until the queue is empty, so no caller can slip a command in after.
            while batches:
                for waiter in batches.popleft().waiters:
                    if not waiter.done():
                        waiter.set_result(_REFUSED)
            self._queued = 0
            if self._room is not None:
                self._room.set()
                self._room = None
            if not self._busy:  # else the lone caller in flight gives the connection back
                with anyio.CancelScope(shield=True):
                    await self._give_back()

    async def _traced_answer(self, batch: _Batch, spans: list[Any]) -> list[Any]:
        """A batch's round trip, as a span linked to its operations' ``spans``."""
        with batch_span(f"PIPELINE {self.source}", spans):
            return await self._answer(batch.packed, batch.scripts, kept=True)

    async def _alone(self, packed: bytes, script: Script | None) -> Any:
        """Send a command in its own round trip, on a connection of the pool."""
        return (await self._answer([packed], None if script is None else {0: script}))[0]

    async def _lone(self, packed: bytes, script: Script | None) -> Any:
        """Send a command nobody else waits to send now, without the loop task."""
        self._busy = True
        try:
            replies = await self._answer(
                [packed], None if script is None else {0: script}, kept=True
            )
        finally:
            self._busy = False
            if self._batches:
                self._wake.set()
            elif not self._running:
                with anyio.CancelScope(shield=True):
                    await self._give_back()
        return replies[0]

    async def _answer(
        self, packed: list[bytes], scripts: dict[int, Script] | None, *, kept: bool = False
    ) -> list[Any]:
        """One reply or error per command; a script Redis lost is loaded and sent again."""
        try:
            replies = await self._round_trip(packed, kept)
        except Exception as error:
            # The round trip itself failed: nobody knows which commands ran.
            return [error] * len(packed)
        if scripts:
            missing = [i for i, script in scripts.items() if isinstance(replies[i], NoScriptError)]
            if missing:
                # Redis restarted or flushed its script cache: load the scripts, send again.
                try:
                    for script in {scripts[i] for i in missing}:
                        await self.client.script_load(script.source)
                    again = await self._round_trip([packed[i] for i in missing], kept)
                except Exception as error:
                    again = [error] * len(missing)
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        return replies

    async def _round_trip(self, packed: list[bytes], kept: bool) -> list[Any]:
        self.pipelines += 1
        self.commands += len(packed)
        if kept:
            connection = self._kept
            if connection is None:
                connection = self._kept = await self.pool.get_connection()
            return await _exchange(connection, packed)
        connection = await self.pool.get_connection()
        try:
            return await _exchange(connection, packed)
        finally:
            await self.pool.release(connection)

    async def _give_back(self) -> None:
        connection, self._kept = self._kept, None
        if connection is not None:
            await self.pool.release(connection)


def _packer(settings: dict[str, Any]) -> Packer:
    """Packs one command as redis-py would, with its encoder's settings."""
    encoding = settings.get("encoding", "utf-8")
    errors = settings.get("encoding_errors", "strict")
    if _hiredis_pack is not None and encoding.lower() in ("utf-8", "utf8") and errors == "strict":
        return _hiredis_pack
    from redis._parsers import Encoder

    encoder = Encoder(encoding, errors, False)  # type: ignore[no-untyped-call]
    encode: Callable[[Arg], bytes] = encoder.encode

    def pack(command: Command) -> bytes:
        pieces = [b"*%d\r\n" % len(command)]
        for arg in map(encode, command):
            pieces += (b"$%d\r\n" % len(arg), arg, b"\r\n")
        return b"".join(pieces)

    return pack


async def _exchange(connection: Any, packed: list[bytes]) -> list[Any]:
    """Send ``packed`` on ``connection`` and read one reply per command, error replies as
    exceptions. A failed exchange closes the connection: it may still owe replies."""
    try:
        if not connection.is_connected:
            await connection.connect()
        await connection.check_health()  # a PING when the connection sat idle too long
        parser = connection._parser  # noqa: SLF001 - redis-py's; its type picks the fast path
        if _HIREDIS_PARSER is not None and type(parser) is _HIREDIS_PARSER:
            return await _exchange_hiredis(connection, parser, packed)
        await connection.send_packed_command(packed, check_health=False)
        return [await _read_reply(connection) for _ in packed]
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


async def _read_reply(connection: Any) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as error:  # this command's own error; the connection is fine
        return error


async def _exchange_hiredis(connection: Any, parser: Any, packed: list[bytes]) -> list[Any]:
    """The exchange straight on the stream and hiredis reader: what ``send_packed_command``
    and ``read_response`` do, with one timeout (renewed on each read) for the whole trip."""
    limit = connection.socket_timeout
    loop = asyncio.get_running_loop()
    replies: list[Any] = []
    count = len(packed)
    stage = "writing to"
    try:
        async with asyncio.timeout(loop.time() + limit if limit else None) as deadline:
            # redis-py's stream and hiredis reader: no public call writes and reads raw RESP.
            writer = connection._writer  # noqa: SLF001
            writer.writelines(packed)
            await writer.drain()
            stage = "reading from"
            gets = parser._reader.gets  # noqa: SLF001
            # RESP3 out-of-band messages (None with a hiredis that has no such type)
            push = getattr(parser, "_hiredis_PushNotificationType", None)
            while len(replies) < count:
                reply = gets()
                if reply is _NOT_ENOUGH_DATA:
                    await parser.read_from_socket()
                    if limit:
                        deadline.reschedule(loop.time() + limit)
                    continue
                if push is not None and isinstance(reply, push):
                    await parser.handle_push_response(reply)  # as read_response: not a reply
                    continue
                if isinstance(reply, RedisConnectionError):  # e.g. LOADING: the trip failed
                    raise reply
                if isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError):
                    raise reply[0]
                replies.append(reply)
    except TimeoutError:
        raise RedisTimeoutError(f"Timeout {stage} {_address(connection)}") from None
    except OSError as error:
        raise RedisConnectionError(
            f"Error while {stage} {_address(connection)}: {error.args}"
        ) from error
    if connection.health_check_interval:
        connection.next_health_check = loop.time() + connection.health_check_interval
    return replies


def _address(connection: Any) -> str:
    path = getattr(connection, "path", None)
    if path:
        return str(path)
    return f"{getattr(connection, 'host', '?')}:{getattr(connection, 'port', '?')}"
