"""The configured data sources at run time: adapters, limits, health and counters.

A source that cannot open at start does not stop the engine (unless it is ``required``): it
is registered out of rotation, logged once with its driver's reason, and the health checks
open it again until it answers; then its own loop (``adapter.run``) starts and it is back.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from urllib.parse import unquote

import anyio
import msgspec
from anyio.abc import TaskGroup

from wf78_core.config import AgentConfig, DataSourceConfig
from wf78_core.core.agents import Agent
from wf78_core.core.scheduling import Limit
from wf78_core.core.stats import SourceCounters
from wf78_core.errors import ConfigError, DataSourceError, NoDataSource, SourceUnavailable
from wf78_core.plugin.datasource import DataSource, SourceInfo

__all__ = ["Source", "SourcePool", "build_agents", "reason_of", "redact_url"]

log = logging.getLogger("wf78.sources")

# ``scheme://user:password@``: logs show ``scheme://user@``.
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]*)@"
)
# Query parameters that look like credentials (``?password=``, ``&api_key=``...).
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&;][^=&;#]*(?:pass|secret|token|key|auth)[^=&;#]*=)([^&;#]*)"
)


def redact_url(url: str | None) -> tuple[str, tuple[str, ...]]:
    """``url`` as a log may show it (no password, no credential-like query value) and the
    secrets taken out, so that a driver's message quoting one can be scrubbed too."""
    if not url:
        return "no url", ()
    secrets: list[str] = []

    def user_only(match: re.Match[str]) -> str:
        secrets.extend((match["pw"], unquote(match["pw"])))
        return f"{match['scheme']}{match['user']}@" if match["user"] else match["scheme"]

    def hidden(match: re.Match[str]) -> str:
        secrets.extend((match[2], unquote(match[2])))
        return f"{match[1]}***"

    shown = _SECRET_PARAMETER.sub(hidden, _USERINFO.sub(user_only, url))
    return shown, tuple(sorted({s for s in secrets if s}, key=len, reverse=True))


def reason_of(error: BaseException) -> str:
    """Why a source failed, in its driver's words: the innermost cause, with its class."""
    inner = error
    for _ in range(8):
        if inner.__cause__ is None:
            break
        inner = inner.__cause__
    text = str(inner) or ("no answer in time" if isinstance(inner, TimeoutError) else "")
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


class Source:
    """One configured data source: its adapter, its limit, health and counters."""

    __slots__ = (
        "_secrets",
        "adapter",
        "agents",
        "counters",
        "healthy",
        "info",
        "limit",
        "name",
        "opened",
        "opening",
        "probe_at",
        "reason",
        "required",
        "type",
        "url",
    )

    def __init__(
        self,
        name: str,
        type: str,
        adapter: DataSource,
        capacity: int,
        *,
        url: str | None = None,
        required: bool = False,
    ) -> None:
        self.name = name
        self.type = type
        self.adapter = adapter
        self.limit = Limit(f"source:{name}", capacity)
        self.healthy = True
        self.probe_at = 0.0  # when an attempt may next check an unhealthy source itself
        self.agents: list[Agent] = []
        self.counters = SourceCounters()
        self.info = SourceInfo(name, type, frozenset(adapter.actions))
        # ``[datasources.<name>] required``: failing to open stops the engine's start.
        self.required = required
        self.opened = False  # its adapter's open() succeeded
        self.opening = False  # an open() is under way
        self.url, self._secrets = redact_url(url)  # the url as logs show it
        self.reason = ""  # why it is out of rotation, in its driver's words

    def scrub(self, text: str) -> str:
        """``text`` without the secrets of the source's url (a driver may quote them)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def describe(self) -> str:
        """The source for a log line: name, type and url without its password."""
        return f"data source {self.name!r} ({self.type}, {self.url})"


class SourcePool:
    """Every open source by name and by type, with their health checks.

    ``named`` is the live mapping (the data path reads it directly: no call per lookup).
    """

    def __init__(self, health_interval: float) -> None:
        self.health_interval = health_interval
        self.named: dict[str, Source] = {}
        self._by_type: dict[str, list[Source]] = {}
        self._routes: dict[tuple[str, str], Source] = {}
        # Where the sources' own loops run (set by ``serve``), for sources opened late.
        self._services: TaskGroup | None = None
        # What a source that opened after the start still needs (the engine's start-up
        # table maintenance), run once it is back in rotation.
        self.on_late_open: Callable[[Source], Awaitable[object]] | None = None

    def add(self, source: Source) -> None:
        self.named[source.name] = source
        self._by_type.setdefault(source.type, []).append(source)

    def clear(self) -> None:
        self.named.clear()
        self._by_type.clear()
        self._routes.clear()
        self._services = None

    def __iter__(self) -> Iterator[Source]:
        return iter(list(self.named.values()))

    def __len__(self) -> int:
        return len(self.named)

    def get(self, name: str) -> Source | None:
        return self.named.get(name)

    def of_type(self, type: str) -> list[Source]:
        """The sources of a type, in configuration order."""
        return list(self._by_type.get(type, ()))

    def matching(self, name: str) -> list[Source]:
        """The source called ``name``, else every source of type ``name``."""
        source = self.named.get(name)
        return [source] if source is not None else self.of_type(name)

    def resolve(self, name: str, action: str) -> Source:
        """A configured source by name, or the first healthy source of that type able to
        perform ``action``; :class:`NoDataSource` when there is neither."""
        key = (name, action)
        cached = self._routes.get(key)
        if cached is not None and cached.healthy:
            return cached
        source = self.named.get(name)
        if source is None:
            of_type = self._by_type.get(name)
            if not of_type:
                raise NoDataSource(
                    f"unknown data source {name!r} (configured: {sorted(self.named)})",
                    data_source=name,
                )
            able = [s for s in of_type if action in s.info.actions] or of_type
            source = next((s for s in able if s.healthy), able[0])
        self._routes[key] = source
        return source

    def candidates(self, action: str) -> list[SourceInfo]:
        """What a selection strategy chooses from: healthy sources able to do ``action``."""
        return [s.info for s in self.named.values() if s.healthy and action in s.info.actions]

    # -- opening -------------------------------------------------------------------------

    async def open(self, name: str, config: DataSourceConfig, adapter: DataSource) -> Source:
        """Register the configured source ``name`` and open its adapter (at start). When it
        cannot open, a ``required`` source raises; any other is logged (one line: name,
        url without password, the driver's reason) and stays registered, out of rotation
        until a health check opens it."""
        capacity = config.pool_size or adapter.concurrency
        source = Source(
            name, config.type, adapter, capacity, url=config.url, required=config.required
        )
        self.add(source)
        source.opening = True
        try:
            await source.adapter.open()
        except ConfigError:
            raise
        except Exception as error:
            reason = source.scrub(reason_of(error))
            if source.required:
                raise DataSourceError(
                    f"required {source.describe()} could not be opened: {reason}",
                    data_source=source.name,
                ) from error
            self._leave(source, reason, "could not be opened at start")
            return source
        finally:
            source.opening = False
        source.opened = True
        return source

    async def serve(self, services: TaskGroup) -> None:
        """Start each open source's own loop (``adapter.run``) and the health checks in
        ``services``; a source opened later by a health check starts its loop there too."""
        self._services = services
        for source in self:
            if source.opened:
                await self._start(source)
        services.start_soon(self.watch)

    async def _start(self, source: Source) -> None:
        run = getattr(source.adapter, "run", None)
        if run is not None and self._services is not None:
            await self._services.start(run)

    async def _reopen(self, source: Source, within: float) -> None:
        """Open a source that could not open before (in ``within`` seconds), and start its
        loop."""
        source.opening = True
        try:
            with anyio.fail_after(within):
                await source.adapter.open()
            try:
                await self._start(source)
            except BaseException:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await source.adapter.close()
                raise
            source.opened = True
        finally:
            source.opening = False

    async def _prepare_late(self, source: Source) -> None:
        if self.on_late_open is None:
            return
        try:
            await self.on_late_open(source)
        except Exception as error:
            log.warning(
                "%s opened late and preparing its tables failed: %s",
                source.describe(),
                source.scrub(reason_of(error)),
            )

    def _leave(self, source: Source, reason: str, what: str) -> None:
        source.healthy = False
        source.reason = reason
        source.info = msgspec.structs.replace(source.info, healthy=False)
        self._routes.clear()
        log.warning(
            "%s %s (out of rotation until its health check passes, every %gs): %s",
            source.describe(),
            what,
            self.health_interval,
            reason,
        )

    def unavailable(self, source: Source) -> SourceUnavailable:
        """The retryable error of an operation for a source out of rotation."""
        why = "failed its health check" if source.opened else "could not be opened yet"
        return SourceUnavailable(
            f"data source {source.name!r} is out of rotation: it {why}; try again later "
            f"(its health check runs every {self.health_interval:g}s)",
            data_source=source.name,
            retry_after=1.0 if source.opened else self.health_interval,
        )

    # -- health ----------------------------------------------------------------------------

    async def watch(self) -> None:
        """Check every source every ``health_interval`` seconds, for ever."""
        while True:
            await anyio.sleep(self.health_interval)
            await self.check_all()

    async def check_all(self) -> dict[str, bool]:
        """Run every source's health check now; failing sources leave rotation."""
        return {source.name: await self.check(source) for source in self}

    async def check(self, source: Source) -> bool:
        """One source's health check (opening it first when it could not open before); a
        change of health forgets the cached routes and is logged."""
        if source.opening:
            return source.healthy  # another check is opening it
        timeout = max(self.health_interval, 1.0)
        late = not source.opened
        try:
            if late:
                await self._reopen(source, timeout)
            with anyio.fail_after(timeout):
                await source.adapter.health()
        except Exception as error:
            if source.healthy:
                self._leave(source, source.scrub(reason_of(error)), "failed its health check")
            return False
        if not source.healthy:
            source.healthy = True
            source.reason = ""
            self._routes.clear()
            log.info("%s passed its health check: back in rotation", source.describe())
            if late and self._services is not None:
                self._services.start_soon(self._prepare_late, source)
        # Strategies see recent latency so they can demote a slow source.
        source.info = msgspec.structs.replace(
            source.info, healthy=True, latency=source.counters.latency.percentile(0.5)
        )
        return True


def build_agents(pool: Sequence[AgentConfig], sources: Iterable[Source]) -> list[Agent]:
    """The configured agents (``[[agents.pool]]``), or one per source with the source's
    capacity; each source learns which agents serve it."""
    sources = list(sources)
    agents: list[Agent] = []
    if pool:
        for order, config in enumerate(pool):
            concurrency = config.concurrency or max(
                (
                    s.limit.capacity
                    for s in sources
                    if s.name in config.capabilities or s.type in config.capabilities
                ),
                default=1,
            )
            agents.append(Agent(config.id, config.capabilities, concurrency, order))
    else:
        for order, source in enumerate(sources):
            agents.append(
                Agent(f"agent-{source.name}", (source.name,), source.limit.capacity, order)
            )
    for source in sources:
        source.agents = [a for a in agents if a.serves(source.name, source.type)]
        for agent in source.agents:
            agent.sources.append(source.name)
    return agents
