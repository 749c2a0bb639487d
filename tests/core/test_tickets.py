"""engine.enqueue: accepted operations whose outcome is collected later."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from conftest import Faults

from wf78_core import DataSourceError, Engine, Operation, Ticket, Wf78Error

Config = Callable[..., dict[str, Any]]


def blocked(config: Config, **engine: Any) -> dict[str, Any]:
    return config(
        datasources={"slow": {"type": "faulty", "block": True, "pool_size": 1}},
        engine=engine,
    )


@pytest.mark.anyio
async def test_enqueue_returns_at_once_and_the_ticket_gives_the_result(config: Config) -> None:
    async with Engine(config()) as engine:
        tickets = [
            await engine.enqueue(
                Operation(action="add", table="t", values={"n": i}, data_source="mem")
            )
            for i in range(50)
        ]
        assert all(isinstance(ticket, Ticket) for ticket in tickets)
        results = [await ticket.result() for ticket in tickets]
    assert len({result.value for result in results}) == 50
    assert {result.data_source for result in results} == {"mem"}
    assert all(ticket.done() for ticket in tickets)
    assert engine.stats().completed == 50


@pytest.mark.anyio
async def test_queued_tickets_hold_no_slot_and_all_finish(faults: Faults, config: Config) -> None:
    async with Engine(blocked(config), plugins=[faults]) as engine:
        tickets = [
            await engine.enqueue(Operation(action="noop", data_source="slow")) for _ in range(200)
        ]
        await faults.until(lambda: len(faults.entered) == 1)
        stats = engine.stats()
        assert stats.pending == 200
        assert stats.sources[0].in_flight == 1  # pool_size 1: one runs, the rest wait
        assert not any(ticket.done() for ticket in tickets)
        faults.gate.set()
        results = [await ticket.result() for ticket in tickets]
    assert len(results) == 200
    assert faults.sources["slow"].served == 200
    assert engine.stats().pending == 0


@pytest.mark.anyio
async def test_a_failed_operation_raises_from_result(faults: Faults, config: Config) -> None:
    cfg = config(datasources={"bad": {"type": "faulty", "fail": 1, "retryable": False}})
    async with Engine(cfg, plugins=[faults]) as engine:
        ticket = await engine.enqueue(Operation(action="noop", data_source="bad"))
        with pytest.raises(DataSourceError, match="failed on purpose"):
            await ticket.result()
    assert engine.stats().failed == 1


@pytest.mark.anyio
async def test_enqueue_applies_back_pressure(faults: Faults, config: Config) -> None:
    cfg = blocked(config, queue_size=5, overload_timeout=0.05)
    async with Engine(cfg, plugins=[faults]) as engine:
        for _ in range(5):
            await engine.enqueue(Operation(action="noop", data_source="slow"))
        with pytest.raises(Wf78Error, match="queue full"):
            await engine.enqueue(Operation(action="noop", data_source="slow"))
        faults.gate.set()


@pytest.mark.anyio
async def test_shutdown_fails_tickets_that_never_ran(faults: Faults, config: Config) -> None:
    cfg = blocked(config, drain_timeout=0.1)
    async with Engine(cfg, plugins=[faults]) as engine:
        tickets = [
            await engine.enqueue(Operation(action="noop", data_source="slow")) for _ in range(10)
        ]
    outcomes = []
    for ticket in tickets:
        with anyio.fail_after(1):  # nobody is left waiting
            try:
                await ticket.result()
            except Wf78Error as error:
                outcomes.append(str(error))
    assert len(outcomes) == 10
    assert all("shut down" in message for message in outcomes)
