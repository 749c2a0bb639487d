"""Shared fixtures: the anyio backend and a probe plugin for engine tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import anyio
import anyio.lowlevel
import msgspec
import pytest
import redis

from wf78_core import DataSourceError, Engine, Operation, TaskContext, TaskEvent, hookimpl
from wf78_core.plugin.datasource import SourceSpec

TERMINAL_RUN = frozenset({"succeeded", "failed", "cancelled"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    """Each test runs in a folder of its own, so files an engine keeps next to a
    configuration given as a dict (the run journal, ./wf78.db) never leak between tests."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


class Watch:
    """Wait, without polling, until a condition holds after some change was signalled."""

    def __init__(self) -> None:
        self._changed = anyio.Event()

    def touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        with anyio.fail_after(within):
            while not condition():
                await self._changed.wait()


class Probe(Watch):
    """A throwaway plugin: instrumented actions and an observer of every task event.

    Actions (all take ``ctx.params``):

    - ``probe.record``: appends ``(workflow-or-label, task)`` to ``calls``;
    - ``probe.wait``: records, then waits for the gate named ``params["gate"]``;
    - ``probe.fail``: fails ``params["times"]`` attempts per run, then succeeds;
    - ``probe.hang``: waits forever (for timeouts and cancellation);
    - ``probe.spin``: counts itself running across a few scheduler turns.

    ``running``/``peak`` count actions in progress; ``until`` waits, without
    polling, until a condition holds after some action or task event.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self.events: list[TaskEvent] = []
        self.gates: dict[str, anyio.Event] = {}
        self.attempts: dict[tuple[str, str], int] = {}
        self.running = 0
        self.peak = 0

    # -- synchronisation -----------------------------------------------------------

    def gate(self, name: str) -> anyio.Event:
        if name not in self.gates:
            self.gates[name] = anyio.Event()
        return self.gates[name]

    async def started(self, label: str, count: int = 1) -> None:
        """Wait until ``label`` was recorded ``count`` times."""
        await self.until(lambda: sum(1 for c in self.calls if c[0] == label) >= count)

    async def finished(self, engine: Engine, *run_ids: str) -> None:
        await self.until(
            lambda: all(engine.get_run(run_id).status in TERMINAL_RUN for run_id in run_ids)
        )

    def states(self, run_id: str | None = None) -> list[tuple[str, str]]:
        return [(e.task, e.state) for e in self.events if run_id is None or e.run_id == run_id]

    # -- actions -------------------------------------------------------------------

    def _label(self, ctx: TaskContext) -> str:
        return str(ctx.params.get("label", ctx.context.get("label", ctx.task.id)))

    def record(self, ctx: TaskContext) -> str:
        label = self._label(ctx)
        self.calls.append((label, ctx.task.id))
        self.touch()
        return label

    async def wait(self, ctx: TaskContext) -> str:
        label = self.record(ctx)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate(str(ctx.params.get("gate", "gate"))).wait()
        finally:
            self.running -= 1
        return label

    async def fail(self, ctx: TaskContext) -> int:
        key = (ctx.run_id, ctx.task.id)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.touch()
        if self.attempts[key] <= int(ctx.params.get("times", 1)):
            raise RuntimeError(f"planned failure {self.attempts[key]}")
        return self.attempts[key]

    async def hang(self, ctx: TaskContext) -> None:
        self.record(ctx)
        await anyio.sleep_forever()

    async def spin(self, ctx: TaskContext) -> str:
        label = self.record(ctx)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            for _ in range(int(ctx.params.get("turns", 5))):
                await anyio.lowlevel.checkpoint()
        finally:
            self.running -= 1
        return label

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("probe.spin", self.spin)
        registry.add("probe.record", self.record)
        registry.add("probe.wait", self.wait)
        registry.add("probe.fail", self.fail)
        registry.add("probe.hang", self.hang)

    @hookimpl
    def wf78_task_event(self, event: TaskEvent) -> None:
        self.events.append(event)
        self.touch()


@pytest.fixture
def probe() -> Probe:
    return Probe()


class FaultySource:
    """Fault injection: a source that blocks on ``faults.gate``, fails, or fails health."""

    actions = frozenset({"noop", "add", "get", "cache_get", "cache_set"})

    def __init__(self, spec: SourceSpec, faults: Faults) -> None:
        options = spec.options
        self.name = spec.name
        self.faults = faults
        self.fail = options.fail  # operations still to fail
        self.retryable = options.retryable
        self.block = options.block
        self.concurrency = options.concurrency
        self.sick = False
        self.closed = False
        self.served = 0

    async def open(self) -> None:
        self.faults.sources[self.name] = self

    async def close(self) -> None:
        self.closed = True

    async def health(self) -> None:
        self.faults.health_checks += 1
        self.faults.touch()
        if self.sick:
            raise ConnectionError(f"{self.name} is down")

    async def execute(self, op: Operation) -> Any:
        self.faults.entered.append((self.name, op))
        self.faults.touch()
        if self.block:
            await self.faults.gate.wait()
        if self.closed:
            raise DataSourceError(f"{self.name} closed while in use", retryable=False)
        if self.fail > 0:
            self.fail -= 1
            raise DataSourceError(f"{self.name} failed on purpose", retryable=self.retryable)
        self.served += 1
        return {"source": self.name, "action": op.action}


class Faults(Watch):
    """A throwaway plugin adding the data-source type ``faulty``.

    Options: ``fail`` (how many operations fail), ``retryable``, ``block`` (operations
    wait for ``faults.gate``), ``concurrency``. Live sources are in ``faults.sources``.
    """

    class Options(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
        fail: int = 0
        retryable: bool = True
        block: bool = False
        concurrency: int = 100

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.sources: dict[str, FaultySource] = {}
        self.entered: list[tuple[str, Operation]] = []
        self.health_checks = 0

    def __call__(self, spec: SourceSpec) -> FaultySource:
        return FaultySource(spec, self)

    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("faulty", self)


@pytest.fixture
def faults() -> Faults:
    return Faults()


def make_config(*workflows: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A config on one memory source ``mem`` with quick shutdown and retries."""
    engine = {"drain_timeout": 2.0, "retry_backoff": 0.001, "aging_seconds": 0.0}
    engine.update(sections.pop("engine", {}))
    config: dict[str, Any] = {
        "engine": engine,
        "datasources": sections.pop("datasources", {"mem": {"type": "memory"}}),
        "workflows": list(workflows),
    }
    config.update(sections)
    return config


@pytest.fixture
def config() -> Callable[..., dict[str, Any]]:
    """``config(*workflows, **sections)``: see :func:`make_config`."""
    return make_config


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh key namespace of the Redis backend on the local Redis; its keys removed after."""
    name = f"t{uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = list(client.scan_iter(match=f"wf78:{{{name}}}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
