"""The express lane of engine.submit (wf78_core.core.lanes): operations whose source the
configuration fixes run inline when every slot is free, and behave exactly as on the full path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from conftest import Faults, Probe

from wf78_core import DataSourceError, Engine, Operation

pytestmark = pytest.mark.anyio

Config = Callable[..., dict[str, Any]]

SOURCES = {"mem": {"type": "memory"}, "slow": {"type": "faulty", "block": True}}


def assert_idle(engine: Engine) -> None:
    stats = engine.stats()
    assert (stats.pending, stats.running) == (0, 0)
    assert all(a.running == 0 for a in stats.agents)
    assert all(s.in_flight == 0 for s in stats.sources)


def noop(source: str = "mem", **fields: Any) -> Operation:
    return Operation(action="noop", data_source=source, **fields)


async def test_which_operations_have_a_lane(config: Config) -> None:
    cfg = config(
        datasources={
            "mem": {"type": "memory"},
            "timed": {"type": "memory", "timeout": 5.0},
        },
        tables={
            "fixed": {"columns": {"name": "text"}, "data_source": "mem"},
            "chosen": {"columns": {"name": "text"}},
        },
    )
    async with Engine(cfg) as engine:
        lanes = engine.dispatcher.lanes
        assert lanes.get(noop()) is not None  # a named source
        assert lanes.get(Operation(action="add", table="fixed", values={})) is not None
        assert lanes.get(noop("memory")) is None  # a type: its healthy source may change
        assert lanes.get(noop("timed")) is None  # a deadline needs a cancel scope
        assert lanes.get(Operation(action="add", table="chosen", values={})) is None
        read = lanes.get(Operation(action="get", table="fixed", where={"id": "1"}))
        assert read is not None and read.shares  # joins the same read in flight
        assert not lanes.get(Operation(action="add", table="fixed", values={})).shares  # type: ignore[union-attr]
        assert lanes.get(noop("nowhere")) is None  # the full path says why


async def test_a_lane_answers_as_the_full_path_does(config: Config) -> None:
    cfg = config(tables={"things": {"columns": {"name": "text"}, "data_source": "mem"}})
    async with Engine(cfg) as engine:
        added = await engine.submit(Operation(action="add", table="things", values={"name": "a"}))
        assert (added.data_source, added.source_type, added.attempts) == ("mem", "memory", 1)
        assert added.reason == "table data_source"
        assert added.agent is not None and added.elapsed >= 0
        got = await engine.submit(
            Operation(action="get", table="things", where={"id": added.value})
        )
        assert [row["name"] for row in got.value] == ["a"]
        explicit = await engine.submit(noop())
        assert explicit.reason == "explicit data_source"
        stats = engine.stats()
        assert (stats.submitted, stats.completed, stats.failed) == (3, 3, 0)
        assert {s.name: s.ops for s in stats.sources} == {"mem": 3}
        assert_idle(engine)


async def test_a_lane_operation_is_seen_by_observers(probe: Probe, config: Config) -> None:
    """Observers of task events get them: with one attached, submit takes the full path."""
    async with Engine(config(), plugins=[probe]) as engine:
        await engine.submit(noop())
    states = [event.state for event in probe.events if event.workflow == "submit"]
    assert states == ["running", "succeeded"]


async def test_slots_come_back_on_every_exit_path(faults: Faults, config: Config) -> None:
    cfg = config(
        datasources={
            "mem": {"type": "memory"},
            "bad": {"type": "faulty", "fail": 1, "retryable": False},
            "slow": {"type": "faulty", "block": True},
        },
    )
    async with Engine(cfg, plugins=[faults]) as engine:
        with pytest.raises(DataSourceError, match="failed on purpose") as raised:
            await engine.submit(noop("bad"))
        assert raised.value.attempts == 1
        assert_idle(engine)
        with anyio.move_on_after(0.2):  # cancelled while the adapter blocks
            await engine.submit(noop("slow"))
        assert faults.entered[-1][0] == "slow"
        assert_idle(engine)
        stats = engine.stats()
        assert (stats.submitted, stats.completed, stats.failed) == (2, 0, 2)
        assert {s.name: s.errors for s in stats.sources}["bad"] == 1
        assert {s.name: s.errors for s in stats.sources}["mem"] == 0


async def test_a_failed_lane_attempt_retries_and_falls_back(faults: Faults, config: Config) -> None:
    cfg = config(datasources={"flaky": {"type": "faulty", "fail": 100}, "mem2": {"type": "memory"}})
    async with Engine(cfg, plugins=[faults]) as engine:
        result = await engine.submit(noop("flaky", fallback=("mem2",), retry=1))
        assert (result.data_source, result.attempts, result.fallback_from) == (
            "mem2",
            3,
            ("flaky",),
        )
        assert "fallback after flaky failed" in result.reason
        assert_idle(engine)


async def test_a_lane_waits_its_turn_when_a_slot_is_taken(faults: Faults, config: Config) -> None:
    """With the engine's only running slot held, a lane's operation queues like any other."""
    cfg = config(datasources=SOURCES, engine={"max_running": 1})
    async with Engine(cfg, plugins=[faults]) as engine:
        done: list[str] = []

        async def run(source: str) -> None:
            await engine.submit(noop(source))
            done.append(source)

        async with anyio.create_task_group() as group:
            group.start_soon(run, "slow")
            await faults.until(lambda: len(faults.entered) == 1)
            group.start_soon(run, "mem")
            await anyio.sleep(0.05)
            assert done == []  # waiting for the slot, not run past the limit
            assert engine.stats().pending == 2
            faults.gate.set()
        assert done == ["slow", "mem"]
        assert_idle(engine)


async def test_lanes_are_forgotten_when_the_engine_stops(config: Config) -> None:
    engine = Engine(config())
    for _ in range(2):
        async with engine:
            result = await engine.submit(noop())
            assert result.data_source == "mem"
            assert engine.stats().sources[0].ops == 1  # this start's source, not the last one's


def read(**fields: Any) -> Operation:
    return Operation(action="get", table="t", where={"id": "1"}, data_source="slow", **fields)


async def test_a_lane_read_joins_the_same_read_in_flight(faults: Faults, config: Config) -> None:
    """Reads of a lane share one query with each other and with the full path's reads."""
    async with Engine(config(datasources=SOURCES), plugins=[faults]) as engine:
        assert engine.dispatcher.lanes.get(read()) is not None
        found: dict[str, Any] = {}

        async def get(name: str, op: Operation) -> None:
            found[name] = (await engine.submit(op)).value

        async with anyio.create_task_group() as group:
            group.start_soon(get, "first", read())
            await faults.until(lambda: len(faults.entered) == 1)
            group.start_soon(get, "lane", read())
            group.start_soon(get, "full", read(timeout=5.0))  # a deadline: the full path
            await anyio.wait_all_tasks_blocked()
            assert len(faults.entered) == 1  # both joined the first query
            faults.gate.set()
        assert (
            found["first"] == found["lane"] == found["full"] == {"source": "slow", "action": "get"}
        )
        assert found["lane"] is not found["first"]  # each caller its own copy
        stats = engine.stats()
        assert (stats.reads_shared, stats.submitted, stats.completed) == (2, 3, 3)
        assert_idle(engine)


async def test_when_a_lane_read_fails_its_joiners_run_their_own(
    faults: Faults, config: Config
) -> None:
    cfg = config(
        datasources={"slow": {"type": "faulty", "block": True, "fail": 1, "retryable": False}}
    )
    async with Engine(cfg, plugins=[faults]) as engine:
        found: dict[str, Any] = {}

        async def first() -> None:
            with pytest.raises(DataSourceError, match="failed on purpose"):
                await engine.submit(read())

        async def joined() -> None:
            found["joined"] = (await engine.submit(read())).value

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            await faults.until(lambda: len(faults.entered) == 1)
            group.start_soon(joined)
            await anyio.wait_all_tasks_blocked()
            assert len(faults.entered) == 1
            faults.gate.set()
        assert found["joined"] == {"source": "slow", "action": "get"}
        assert len(faults.entered) == 2  # its own query, not the failed one's error
        stats = engine.stats()
        assert (stats.reads_shared, stats.submitted, stats.completed, stats.failed) == (0, 2, 1, 1)
        assert_idle(engine)
