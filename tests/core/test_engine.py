"""The engine end to end on memory sources: scheduling, failures, triggers, data path."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from conftest import Faults, Probe

from wf78_core import (
    DataSourceError,
    Engine,
    InvalidOperation,
    NoAgentAvailable,
    Operation,
    Overloaded,
    Result,
    TaskContext,
    UnknownWorkflow,
    Wf78Error,
    hookimpl,
)
from wf78_memory import MemorySource

pytestmark = pytest.mark.anyio

Config = Callable[..., dict[str, Any]]


def task(id: str, action: str = "probe.record", **fields: Any) -> dict[str, Any]:
    return {"id": id, "action": action, **fields}


def workflow(id: str, *tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": id, "tasks": list(tasks), **fields}


def add(**fields: Any) -> Operation:
    return Operation(action="add", table="things", values={"name": "x"}, **fields)


def assert_idle(engine: Engine) -> None:
    """Nothing queued, running or accepted: every slot came back."""
    stats = engine.stats()
    assert stats.queued == {}
    assert stats.running == 0
    assert stats.pending == 0
    assert all(w.running == 0 and w.queued == 0 for w in stats.workflows)
    assert all(a.running == 0 for a in stats.agents)
    assert all(s.in_flight == 0 for s in stats.sources)


# -- priority and aging --------------------------------------------------------------------


async def test_queued_tasks_run_in_priority_order(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow("blocker", task("hold", "probe.wait"), priority=9),
        *(workflow(f"p{level}", task("t"), priority=level) for level in range(3)),
        engine={"max_running": 1},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        blocker = await engine.run("blocker", wait=False)
        await probe.started("hold")
        runs = []
        for workflow_id, label, priority in [
            ("p2", "p2a", None),
            ("p1", "p1a", None),
            ("p0", "p0a", None),
            ("p2", "p2b", None),
            ("p0", "p0b", None),
            ("p1", "p1b", None),
            ("p2", "p2-raised", 0),  # a run may be given a priority of its own
        ]:
            run = await engine.run(workflow_id, {"label": label}, wait=False, priority=priority)
            runs.append(run.id)
        stats = engine.stats()
        assert stats.queued == {0: 3, 1: 2, 2: 2}
        assert stats.running == 1
        assert {w.id: w.queued for w in stats.workflows} == {
            "blocker": 0,
            "p0": 2,
            "p1": 2,
            "p2": 3,
        }
        assert probe.calls == [("hold", "hold")]
        probe.gate("gate").set()
        await probe.finished(engine, blocker.id, *runs)
        assert_idle(engine)
    order = [label for label, _ in probe.calls[1:]]
    assert order == ["p0a", "p0b", "p2-raised", "p1a", "p1b", "p2a", "p2b"]


@pytest.mark.parametrize(("aging", "first"), [(0.02, "old"), (0.0, "urgent")])
async def test_aging_end_to_end(probe: Probe, config: Config, aging: float, first: str) -> None:
    cfg = config(
        workflow("blocker", task("hold", "probe.wait")),
        workflow("low", task("t"), priority=5),
        workflow("high", task("t"), priority=0),
        engine={"max_running": 1, "aging_seconds": aging},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        blocker = await engine.run("blocker", wait=False)
        await probe.started("hold")
        old = await engine.run("low", {"label": "old"}, wait=False)
        # Real waiting time is what aging measures: 0.25 s is 12 levels at 0.02 s a level.
        await anyio.sleep(0.25)
        urgent = await engine.run("high", {"label": "urgent"}, wait=False)
        assert engine.stats().queued == {0: 1, 5: 1}
        probe.gate("gate").set()
        await probe.finished(engine, blocker.id, old.id, urgent.id)
    assert probe.calls[1][0] == first


# -- concurrency limits and slots ------------------------------------------------------------


async def test_max_concurrent_is_never_exceeded(probe: Probe, config: Config) -> None:
    fan = [task(f"t{i}", "probe.spin") for i in range(8)]
    cfg = config(
        workflow("fan", *fan, task("join", depends_on=[t["id"] for t in fan]), max_concurrent=3)
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        first = await engine.run("fan", wait=False)
        second = await engine.run("fan", wait=False)  # the limit is shared by every run
        await probe.finished(engine, first.id, second.id)
        for run_id in (first.id, second.id):
            assert engine.get_run(run_id).status == "succeeded"
        assert_idle(engine)
    assert probe.peak == 3
    assert sum(1 for _, task_id in probe.calls if task_id == "join") == 2


async def test_global_max_running_bounds_every_workflow(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow("a", *(task(f"t{i}", "probe.spin") for i in range(4))),
        workflow("b", *(task(f"t{i}", "probe.spin") for i in range(4))),
        engine={"max_running": 2},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        runs = [await engine.run(w, wait=False) for w in ("a", "b", "a")]
        await probe.finished(engine, *(r.id for r in runs))
    assert probe.peak == 2


OUTCOMES = {
    "success": (task("t"), "succeeded"),
    "failure": (task("t", "probe.fail", params={"times": 1}), "failed"),
    "timeout": (task("t", "probe.hang", timeout=0.05), "failed"),
    "retry": (task("t", "probe.fail", params={"times": 1}, retry=1), "succeeded"),
    "cancel": (task("t", "probe.hang"), "cancelled"),
}


@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
async def test_slot_is_released_on_every_exit_path(
    probe: Probe, config: Config, outcome: str
) -> None:
    definition, status = OUTCOMES[outcome]
    cfg = config(
        workflow("w", definition, max_concurrent=1),
        workflow("next", task("t")),
        engine={"max_running": 1},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        with anyio.fail_after(5):
            if outcome == "cancel":
                run = await engine.run("w", wait=False)
                await probe.started("t")
                assert engine.stats().running == 1
                await engine.cancel(run.id)
                await probe.finished(engine, run.id)
            else:
                run = await engine.run("w")
            assert engine.get_run(run.id).status == status
            assert_idle(engine)
            if outcome != "cancel":  # the workflow's only slot is free: it runs again alike
                assert (await engine.run("w")).status == status
            # and so is the engine's only slot
            assert (await engine.run("next")).status == "succeeded"
            assert_idle(engine)


async def test_no_slot_is_held_while_waiting_for_dependencies(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow(
            "chain",
            task("first", "probe.wait", params={"gate": "g1"}),
            task("then", depends_on=["first"]),
        ),
        workflow("other", task("other", "probe.wait", params={"gate": "g2"})),
        engine={"max_running": 2},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        chain = await engine.run("chain", wait=False)
        await probe.started("first")
        other = await engine.run("other", wait=False)
        await probe.started("other")  # got the second slot: "then" holds none
        assert engine.get_run(chain.id).tasks["then"].state == "pending"
        assert engine.stats().running == 2
        probe.gate("g1").set()
        probe.gate("g2").set()
        await probe.finished(engine, chain.id, other.id)
        assert engine.get_run(chain.id).status == "succeeded"
        assert_idle(engine)


async def test_no_slot_is_held_while_queued(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow("solo", task("solo", "probe.wait"), max_concurrent=1, priority=4),
        workflow("other", task("other")),
        engine={"max_running": 2},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        first = await engine.run("solo", wait=False)
        await probe.started("solo")
        second = await engine.run("solo", wait=False)
        stats = engine.stats()
        assert stats.queued == {4: 1}
        assert stats.running == 1, "the queued task holds no engine slot"
        with anyio.fail_after(2):
            assert (await engine.run("other")).status == "succeeded"
        probe.gate("gate").set()
        await probe.finished(engine, first.id, second.id)
        assert_idle(engine)
    assert [label for label, _ in probe.calls] == ["solo", "other", "solo"]


# -- failures: timeout, retry, fallback ------------------------------------------------------


async def test_timeout_fails_the_task_and_skips_dependants(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow(
            "w",
            task("slow", "probe.hang", timeout=0.05),
            task("after", depends_on=["slow"]),
            task("later", depends_on=["after"]),
            task("independent"),
        )
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        started = time.monotonic()
        run = await engine.run("w")
        assert time.monotonic() - started < 2
    assert run.status == "failed"
    assert run.tasks["slow"].state == "failed"
    assert "TaskTimeout" in (run.tasks["slow"].error or "")
    assert run.tasks["after"].state == "skipped"
    assert run.tasks["later"].state == "skipped"
    assert run.tasks["independent"].state == "succeeded"
    assert "slow" in (run.error or "")


@pytest.mark.parametrize(
    ("times", "retry", "state", "attempts"),
    [(0, 0, "succeeded", 1), (2, 2, "succeeded", 3), (3, 5, "succeeded", 4), (3, 2, "failed", 3)],
)
async def test_retry_counts(
    probe: Probe, config: Config, times: int, retry: int, state: str, attempts: int
) -> None:
    cfg = config(workflow("w", task("t", "probe.fail", params={"times": times}, retry=retry)))
    async with Engine(cfg, plugins=[probe]) as engine:
        run = await engine.run("w")
        assert engine.stats().retries == min(times, retry)
    assert run.tasks["t"].state == state
    assert run.tasks["t"].attempts == attempts
    if state == "succeeded":
        assert run.tasks["t"].result == attempts
    else:
        assert "planned failure 3" in (run.tasks["t"].error or "")
    retrying = [e for e in probe.events if e.state == "retrying"]
    assert [e.attempt for e in retrying] == list(range(1, min(times, retry) + 1))


async def test_errors_that_cannot_help_are_not_retried(probe: Probe, config: Config) -> None:
    calls: list[int] = []

    class Plugin:
        @hookimpl
        def wf78_register_actions(self, registry: Any) -> None:
            def invalid(ctx: TaskContext) -> None:
                calls.append(1)
                raise InvalidOperation("bad request")

            registry.add("invalid", invalid)

    cfg = config(workflow("w", task("t", "invalid", retry=3)))
    async with Engine(cfg, plugins=[probe, Plugin()]) as engine:
        run = await engine.run("w")
    assert run.tasks["t"].state == "failed"
    assert calls == [1]


async def test_operation_retry_on_a_flaky_source(faults: Faults, config: Config) -> None:
    cfg = config(datasources={"flaky": {"type": "faulty", "fail": 2}})
    async with Engine(cfg, plugins=[faults]) as engine:
        result = await engine.submit(add(retry=2))
        assert result.attempts == 3
        assert result.data_source == "flaky"
        source = engine.stats().sources[0]
        assert (source.ops, source.errors, source.retries) == (1, 2, 2)
        faults.sources["flaky"].fail = 5
        with pytest.raises(DataSourceError) as raised:
            await engine.submit(add(retry=1))
        assert raised.value.attempts == 2


FALLBACK_SOURCES = {
    "flaky": {"type": "faulty", "fail": 100},
    "mem2": {"type": "memory"},
}


async def test_fallback_after_retryable_failure(faults: Faults, config: Config) -> None:
    cfg = config(datasources=FALLBACK_SOURCES)
    async with Engine(cfg, plugins=[faults]) as engine:
        result = await engine.submit(add(data_source="flaky", fallback=("mem2",), retry=1))
        assert result.data_source == "mem2"
        assert result.source_type == "memory"
        assert result.fallback_from == ("flaky",)
        assert "fallback" in result.reason and "flaky" in result.reason
        assert result.attempts == 3  # two on flaky, one on mem2
        stats = engine.stats()
        assert stats.fallbacks == 1
        assert {s.name: s.fallbacks for s in stats.sources} == {"flaky": 0, "mem2": 1}


async def test_task_fallback_in_a_workflow(faults: Faults, config: Config) -> None:
    cfg = config(
        workflow(
            "w",
            task(
                "write",
                "datasource.execute",
                data_source="flaky",
                fallback=["mem2"],
                params={"action": "add", "table": "things", "values": {"name": "x"}},
            ),
        ),
        datasources=FALLBACK_SOURCES,
    )
    async with Engine(cfg, plugins=[faults]) as engine:
        run = await engine.run("w")
    written = run.tasks["write"]
    assert run.status == "succeeded"
    assert written.data_source == "mem2"
    assert isinstance(written.result, Result)
    assert written.result.fallback_from == ("flaky",)
    assert "fallback" in written.result.reason


async def test_non_retryable_errors_do_not_fall_back(faults: Faults, config: Config) -> None:
    sources = {
        "flaky": {"type": "faulty", "fail": 1, "retryable": False},
        "mem2": {"type": "memory"},
    }
    cfg = config(
        workflow(
            "w",
            task(
                "write",
                "datasource.execute",
                data_source="flaky",
                fallback=["mem2"],
                retry=2,
                params={"action": "add", "table": "things"},
            ),
            task("after", "noop", depends_on=["write"]),
        ),
        datasources=sources,
    )
    async with Engine(cfg, plugins=[faults]) as engine:
        with pytest.raises(DataSourceError, match="failed on purpose") as raised:
            await engine.submit(add(data_source="flaky", fallback=("mem2",), retry=2))
        assert raised.value.attempts == 1
        faults.sources["flaky"].fail = 1
        run = await engine.run("w")
        assert {s.name: s.ops for s in engine.stats().sources} == {"flaky": 0, "mem2": 0}
    assert run.tasks["write"].state == "failed"
    assert run.tasks["write"].attempts == 1
    assert run.tasks["after"].state == "skipped"


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_a_run(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow(
            "w",
            task("running", "probe.hang"),
            task("queued", "probe.hang"),
            task("waiting", depends_on=["running"]),
            max_concurrent=1,
        ),
        workflow("next", task("t")),
        engine={"max_running": 1},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        run = await engine.run("w", wait=False)
        await probe.started("running")
        assert engine.stats().queued == {1: 1}
        snapshot = await engine.cancel(run.id)
        await probe.finished(engine, run.id)
        final = engine.get_run(run.id)
        assert final.status == "cancelled"
        assert {t: r.state for t, r in final.tasks.items()} == {
            "running": "cancelled",
            "queued": "cancelled",
            "waiting": "cancelled",
        }
        assert snapshot.status == "cancelled"
        assert_idle(engine)
        assert (await engine.run("next")).status == "succeeded"
        assert (await engine.cancel(run.id)).status == "cancelled"  # twice is harmless
        with pytest.raises(UnknownWorkflow):
            await engine.cancel("no-such-run")
    assert [label for label, _ in probe.calls] == ["running", "t"]
    assert ("queued", "cancelled") in probe.states(run.id)


async def test_cancelled_run_whose_task_was_just_granted_never_runs_it(
    probe: Probe, config: Config
) -> None:
    cfg = config(workflow("w", task("t", "probe.hang"), max_concurrent=1))
    async with Engine(cfg, plugins=[probe]) as engine:
        first = await engine.run("w", {"label": "first"}, wait=False)
        await probe.started("first")
        second = await engine.run("w", {"label": "second"}, wait=False)
        await engine.cancel(first.id)  # frees the slot: second's task is granted...
        await engine.cancel(second.id)  # ...and cancelled before it starts
        await probe.finished(engine, first.id, second.id)
        await anyio.wait_all_tasks_blocked()
        assert engine.get_run(second.id).tasks["t"].state == "cancelled"
        assert_idle(engine)
        assert engine.stats().runs_active == 0
    assert [label for label, _ in probe.calls] == ["first"]


# -- triggers ----------------------------------------------------------------------------------


async def test_event_trigger(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow("on_ping", task("a"), trigger="event", event="ping"),
        workflow("also_ping", task("b"), trigger="event", event="ping"),
        workflow("on_pong", task("c"), trigger="event", event="pong"),
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        run_ids = await engine.emit("ping", {"label": "payload"})
        assert len(run_ids) == 2
        await probe.finished(engine, *run_ids)
        assert {engine.get_run(r).workflow for r in run_ids} == {"on_ping", "also_ping"}
        assert all(engine.get_run(r).status == "succeeded" for r in run_ids)
        assert await engine.emit("nobody-listens") == []
    assert sorted(probe.calls) == [("payload", "a"), ("payload", "b")]


async def test_interval_schedule_runs_repeatedly(probe: Probe, config: Config) -> None:
    cfg = config(workflow("tick", task("tick"), trigger="schedule", schedule=0.05))
    async with Engine(cfg, plugins=[probe]) as engine:
        await probe.started("tick", count=3)
        runs = {e.run_id for e in probe.events if e.state == "succeeded"}
        assert len(runs) >= 2
        assert all(engine.get_run(r).context.get("scheduled_at") for r in runs if r)


async def test_cron_schedule_is_accepted(probe: Probe, config: Config) -> None:
    cfg = config(workflow("nightly", task("t"), trigger="schedule", schedule="0 3 * * *"))
    assert await Engine.check(cfg, plugins=[probe]) == []
    async with Engine(cfg, plugins=[probe]) as engine:
        await anyio.wait_all_tasks_blocked()
        assert engine.stats().runs_active == 0


async def test_api_trigger_unknown_workflow(probe: Probe, config: Config) -> None:
    async with Engine(config(workflow("w", task("t"))), plugins=[probe]) as engine:
        with pytest.raises(UnknownWorkflow, match="nope"):
            await engine.run("nope")
        with pytest.raises(UnknownWorkflow):
            engine.get_run("nope")


# -- back-pressure and stats ---------------------------------------------------------------


async def test_back_pressure(faults: Faults, probe: Probe, config: Config) -> None:
    cfg = config(
        workflow("w", task("t")),
        workflow("on_go", task("t"), trigger="event", event="go"),
        datasources={"slow": {"type": "faulty", "block": True}},
        engine={"queue_size": 2, "overload_timeout": 0.1},
    )
    results: list[Result] = []

    async def submit(engine: Engine) -> None:
        results.append(await engine.submit(add()))

    async with Engine(cfg, plugins=[faults, probe]) as engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, engine)
            tg.start_soon(submit, engine)
            await faults.until(lambda: len(faults.entered) == 2)
            assert engine.stats().pending == 2
            started = time.monotonic()
            with pytest.raises(Overloaded) as raised:
                await engine.submit(add())
            assert time.monotonic() - started >= 0.09
            assert raised.value.retry_after > 0
            with pytest.raises(Overloaded):
                await engine.run("w")
            with pytest.raises(Overloaded):
                await engine.emit("go")
            assert await engine.emit("nobody-listens") == []  # takes no queue space
            faults.gate.set()
        assert [r.data_source for r in results] == ["slow", "slow"]
        assert (await engine.submit(add())).data_source == "slow"
        assert (await engine.run("w")).status == "succeeded"
        assert_idle(engine)
        assert engine.stats().submitted == 3


async def test_stats_while_busy_and_after(faults: Faults, probe: Probe, config: Config) -> None:
    cfg = config(
        workflow("blocker", task("hold", "probe.wait"), priority=0),
        workflow("queued", task("t"), priority=3),
        datasources={
            "slow": {"type": "faulty", "block": True},
            "flaky": {"type": "faulty", "fail": 1},
        },
        engine={"max_running": 2},
    )
    async with Engine(cfg, plugins=[faults, probe]) as engine, anyio.create_task_group() as tg:
        blocker = await engine.run("blocker", wait=False)
        await probe.started("hold")
        tg.start_soon(engine.submit, add(data_source="slow"))
        await faults.until(lambda: len(faults.entered) == 1)
        waiting = [await engine.run("queued", wait=False) for _ in range(2)]
        stats = engine.stats()
        assert stats.queued == {3: 2}
        assert stats.running == 2
        assert stats.pending == 4
        assert stats.runs_active == 3
        by_workflow = {w.id: (w.running, w.queued, w.max_concurrent) for w in stats.workflows}
        assert by_workflow == {"blocker": (1, 0, 10), "queued": (0, 2, 10)}
        agents = {a.id: a for a in stats.agents}
        assert agents["agent-slow"].status == "busy"
        assert agents["agent-slow"].load == pytest.approx(1 / 100)
        assert agents["agent-slow"].capabilities == ("slow",)
        assert agents["agent-flaky"].status == "idle"
        faults.gate.set()
        probe.gate("gate").set()
        await probe.finished(engine, blocker.id, *(r.id for r in waiting))
        with pytest.raises(DataSourceError):
            await engine.submit(add(data_source="flaky"))
        await engine.submit(add(data_source="flaky"))
        await faults.until(lambda: engine.stats().pending == 0)
        stats = engine.stats()
        sources = {s.name: s for s in stats.sources}
        assert (sources["slow"].ops, sources["slow"].errors) == (1, 0)
        assert (sources["flaky"].ops, sources["flaky"].errors) == (1, 1)
        assert sources["slow"].latency_p50 > 0
        assert sources["slow"].latency_p99 >= sources["slow"].latency_p50
        assert sources["slow"].type == "faulty"
        assert (stats.submitted, stats.completed, stats.failed) == (3, 2, 1)
        assert stats.runs_finished == 3 and stats.runs_active == 0
        assert stats.uptime > 0
        assert {a.id: a.completed for a in stats.agents} == {"agent-slow": 1, "agent-flaky": 1}


async def test_observer_sees_every_state(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow(
            "w",
            task("ok"),
            task("bad", "probe.fail", params={"times": 2}, retry=1),
            task("skipped", depends_on=["bad"]),
        )
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        run = await engine.run("w")
    states = probe.states(run.id)
    assert [s for t, s in states if t == "ok"] == ["queued", "running", "succeeded"]
    assert [s for t, s in states if t == "bad"] == [
        "queued",
        "running",
        "retrying",
        "queued",
        "running",
        "failed",
    ]
    assert [s for t, s in states if t == "skipped"] == ["skipped"]
    failed = next(e for e in probe.events if e.state == "failed")
    assert failed.workflow == "w" and failed.attempt == 2
    assert "planned failure 2" in (failed.error or "")


# -- health, selection, agents ---------------------------------------------------------------


async def test_unhealthy_source_leaves_rotation_and_comes_back(
    faults: Faults, config: Config
) -> None:
    cfg = config(datasources={"sick": {"type": "faulty"}, "mem2": {"type": "memory"}})
    async with Engine(cfg, plugins=[faults]) as engine:
        assert await engine.check_health() == {"sick": True, "mem2": True}
        assert (await engine.submit(add())).data_source == "sick"  # first candidate
        faults.sources["sick"].sick = True
        assert await engine.check_health() == {"sick": False, "mem2": True}
        stats = engine.stats()
        assert {a.id: a.status for a in stats.agents} == {
            "agent-sick": "out_of_rotation",
            "agent-mem2": "idle",
        }
        assert {s.name: s.healthy for s in stats.sources} == {"sick": False, "mem2": True}
        with pytest.raises(NoAgentAvailable, match="health"):
            await engine.submit(add(data_source="sick"))
        degraded = await engine.submit(add(data_source="sick", fallback=("mem2",)))
        assert degraded.data_source == "mem2"
        assert (await engine.submit(add())).data_source == "mem2"  # selection skips it
        assert faults.sources["sick"].served == 1
        faults.sources["sick"].sick = False
        assert await engine.check_health() == {"sick": True, "mem2": True}
        assert engine.stats().agents[0].status == "idle"
        assert (await engine.submit(add(data_source="sick"))).data_source == "sick"


async def test_an_attempt_checks_an_unhealthy_source_at_most_twice_a_second(
    faults: Faults, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(datasources={"sick": {"type": "faulty"}}, agents={"health_interval": 3600})
    async with Engine(cfg, plugins=[faults]) as engine:
        sick = faults.sources["sick"]
        sick.sick = True
        await engine.check_health()
        checks = faults.health_checks
        # The first attempt checks the source itself: still down, so it is refused...
        with pytest.raises(NoAgentAvailable, match="health"):
            await engine.submit(add(data_source="sick"))
        assert faults.health_checks == checks + 1
        # ...and the next ones within the probe interval are refused without asking.
        sick.sick = False
        with pytest.raises(NoAgentAvailable):
            await engine.submit(add(data_source="sick"))
        assert faults.health_checks == checks + 1 and sick.served == 0
        # Once the interval is over, an attempt finds it back, long before the health loop.
        monkeypatch.setattr("wf78_core.core.routing.PROBE_INTERVAL", 0.0)
        engine.sources.named["sick"].probe_at = 0.0
        assert (await engine.submit(add(data_source="sick"))).data_source == "sick"
        assert faults.health_checks == checks + 2 and engine.stats().sources[0].healthy


async def test_health_loop_runs_on_its_own(faults: Faults, config: Config) -> None:
    cfg = config(datasources={"sick": {"type": "faulty"}}, agents={"health_interval": 0.02})
    async with Engine(cfg, plugins=[faults]) as engine:
        faults.sources["sick"].sick = True
        await faults.until(lambda: not engine.stats().sources[0].healthy)
        faults.sources["sick"].sick = False
        await faults.until(lambda: engine.stats().sources[0].healthy)


class FakeRedis:
    """Registers the memory adapter as type ``redis`` (the real one is blocked)."""

    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("redis", MemorySource)


async def test_selection_by_hints(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    monkeypatch.setenv("WF78_DISABLE_PLUGINS", "redis")
    cfg = config(
        datasources={"main": {"type": "memory"}, "speedy": {"type": "redis"}},
        tables={"Sessions": {"columns": ["token"], "kind": "cache"}},
    )
    async with Engine(cfg, plugins=[FakeRedis()]) as engine:
        plain = await engine.submit(add())
        assert plain.data_source == "main"
        cached = await engine.submit(Operation(action="cache_set", key="k", value=1, kind="cache"))
        assert (cached.data_source, cached.source_type) == ("speedy", "redis")
        assert cached.reason == "rule kind=cache -> redis"
        fast = await engine.submit(add(latency="low"))
        assert fast.data_source == "speedy"
        by_table = await engine.submit(Operation(action="add", table="Sessions", values={}))
        assert by_table.data_source == "speedy"
        explicit = await engine.submit(add(kind="cache", data_source="main"))
        assert (explicit.data_source, explicit.reason) == ("main", "explicit data_source")
        by_type = await engine.submit(add(data_source="redis"))
        assert by_type.data_source == "speedy"


@pytest.mark.parametrize(
    ("allocator", "expected"),
    [("least_load", ["a1", "a2", "a1"]), ("priority", ["a1", "a1", "a2"])],
)
async def test_allocators(
    faults: Faults, config: Config, allocator: str, expected: list[str]
) -> None:
    cfg = config(
        datasources={"slow": {"type": "faulty", "block": True}},
        agents={
            "allocator": allocator,
            "pool": [
                {"id": "a1", "capabilities": ["slow"], "concurrency": 2},
                {"id": "a2", "capabilities": ["faulty"], "concurrency": 2},
            ],
        },
    )
    results: dict[int, Result] = {}

    async def submit(engine: Engine, index: int) -> None:
        results[index] = await engine.submit(add())

    async with Engine(cfg, plugins=[faults]) as engine, anyio.create_task_group() as tg:
        for index in range(3):
            tg.start_soon(submit, engine, index)
            await faults.until(lambda index=index: len(faults.entered) == index + 1)
        loads = {a.id: a.running for a in engine.stats().agents}
        assert loads == {"a1": expected.count("a1"), "a2": expected.count("a2")}
        faults.gate.set()
    assert [results[i].agent for i in range(3)] == expected


# -- lifecycle ---------------------------------------------------------------------------------


async def test_engine_after_exit_raises_a_clear_error(probe: Probe, config: Config) -> None:
    engine = Engine(config(workflow("w", task("t"), trigger="event", event="e")), plugins=[probe])
    with pytest.raises(Wf78Error, match="not running"):
        await engine.submit(add())
    async with engine:
        assert (await engine.submit(add())).data_source == "mem"
    for call in (engine.submit(add()), engine.run("w"), engine.emit("e")):
        with pytest.raises(Wf78Error, match="async with"):
            await call


async def test_the_body_s_own_exception_leaves_the_engine_unwrapped(config: Config) -> None:
    with pytest.raises(KeyError) as raised:
        async with Engine(config()):
            raise KeyError("the body's own")
    assert raised.value.args == ("the body's own",)
    # A group the body raised itself is re-raised as it was, not inside another one.
    mine = ExceptionGroup("the body's group", [ValueError("a"), KeyError("b")])
    with pytest.raises(ExceptionGroup) as grouped:
        async with Engine(config()):
            raise mine
    assert grouped.value is mine


async def test_drain_on_exit_lets_in_flight_work_finish(
    faults: Faults, probe: Probe, config: Config
) -> None:
    cfg = config(
        workflow("w", task("t", "probe.wait")),
        datasources={"slow": {"type": "faulty", "block": True}},
    )
    results: list[Result] = []

    async def submit(engine: Engine) -> None:
        results.append(await engine.submit(add()))

    async with anyio.create_task_group() as tg:
        engine = Engine(cfg, plugins=[faults, probe])
        async with engine:
            tg.start_soon(submit, engine)
            run = await engine.run("w", wait=False)
            await faults.until(lambda: len(faults.entered) == 1)
            await probe.started("t")
            faults.gate.set()
            probe.gate("gate").set()
        # leaving waited for both: the source was still open when the submit finished
        assert faults.sources["slow"].closed
        assert [r.data_source for r in results] == ["slow"]
        assert engine.get_run(run.id).status == "succeeded"


async def test_drain_timeout_cancels_what_is_left(probe: Probe, config: Config) -> None:
    cfg = config(
        workflow("w", task("t", "probe.hang"), task("after", depends_on=["t"])),
        engine={"drain_timeout": 0.05},
    )
    waited: list[Any] = []

    async def run_and_wait(engine: Engine) -> None:
        waited.append(await engine.run("w", {"label": "waiter"}))

    started = time.monotonic()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with Engine(cfg, plugins=[probe]) as engine:
                run = await engine.run("w", wait=False)
                tg.start_soon(run_and_wait, engine)
                await probe.started("t")
                await probe.started("waiter")
            # a caller still waiting for its run is answered, not left hanging
    assert time.monotonic() - started < 2
    for final in (engine.get_run(run.id), waited[0]):
        assert final.status == "cancelled"
        assert final.tasks["t"].state == "cancelled"
        assert final.tasks["after"].state == "cancelled"
