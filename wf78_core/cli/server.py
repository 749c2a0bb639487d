"""Serving with uvicorn until a signal, shared by ``wf78 serve`` and ``wf78 demo``."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

import anyio

from wf78_core.cli.common import UsageError
from wf78_core.errors import Wf78Error

if TYPE_CHECKING:
    # Imported when a server runs: validate, run and maintain do without it.
    import uvicorn

__all__ = ["check_port", "run_server", "url_host"]


@contextlib.contextmanager
def _stop_signals(server: uvicorn.Server) -> Iterator[None]:
    """Ctrl-C and SIGTERM end the process normally. While it serves, uvicorn takes both
    signals, shuts down gracefully, then raises the caught signal again: by default SIGTERM
    would then kill the process instead of letting it exit 0, and SIGINT raise
    KeyboardInterrupt; here that repeat is ignored. Before uvicorn takes over, either one
    raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        if not server.should_exit:
            raise KeyboardInterrupt

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _bound_port(server: uvicorn.Server, fallback: int) -> int:
    """The port the server listens on (``--port 0`` asks the system for one)."""
    for listener in getattr(server, "servers", ()):
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return fallback


def url_host(host: str) -> str:
    """The host for URLs on this machine: a wildcard bind is reached on the loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def _serve_until(
    server: uvicorn.Server,
    on_started: Callable[[int], None],
    while_serving: Callable[[str], Awaitable[None]] | None = None,
    duration: float | None = None,
) -> None:
    """Run ``server`` until a signal (or ``duration`` seconds after start-up); once it listens,
    call ``on_started(port)`` and run ``while_serving(base_url)`` beside it, stopped first."""
    stopped = anyio.Event()
    async with anyio.create_task_group() as group:

        async def serve() -> None:
            try:
                await server.serve()
            except SystemExit:
                pass  # uvicorn exits when it cannot listen (address in use), after saying why
            finally:
                stopped.set()

        group.start_soon(serve)
        while not server.started:  # uvicorn has no start-up event to wait on
            if stopped.is_set():
                return  # it could not start; it said why
            await anyio.sleep(0.05)
        if server.should_exit:  # stopped as soon as it started
            await stopped.wait()
            return
        port = _bound_port(server, server.config.port)
        on_started(port)
        side = anyio.CancelScope()
        if while_serving is not None:
            base_url = f"http://{url_host(server.config.host)}:{port}"

            async def beside() -> None:
                with side:
                    await while_serving(base_url)

            group.start_soon(beside)
        deadline = None if duration is None else anyio.current_time() + duration
        # uvicorn's signal handlers set should_exit; stop the side task before it shuts down.
        while not server.should_exit and not stopped.is_set():
            if deadline is not None and anyio.current_time() >= deadline:
                break
            await anyio.sleep(0.1)
        side.cancel()
        server.should_exit = True
        await stopped.wait()


def run_server(
    server: uvicorn.Server,
    on_started: Callable[[int], None],
    while_serving: Callable[[str], Awaitable[None]] | None = None,
    duration: float | None = None,
) -> None:
    """:func:`_serve_until` in its own event loop; Ctrl-C and SIGTERM end it normally.
    :class:`Wf78Error` when the server did not start."""
    try:
        with _stop_signals(server):
            anyio.run(_serve_until, server, on_started, while_serving, duration)
    except KeyboardInterrupt:
        return  # a signal before uvicorn took over: nothing started, nothing to stop
    if not server.started:
        raise Wf78Error(
            f"the server did not start on {server.config.host}:{server.config.port} "
            "(see the log above)"
        )


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {port}")
