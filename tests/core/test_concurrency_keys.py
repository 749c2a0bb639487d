"""Concurrency keys: at most ``max_per_key`` running runs per value of a context field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from conftest import TERMINAL_RUN, Watch

from wf78_core import ConfigError, Engine, TaskContext, TaskEvent, hookimpl
from wf78_core.config import parse_config
from wf78_core.core.concurrency_keys import key_value

pytestmark = pytest.mark.anyio

Config = Callable[..., dict[str, Any]]


class Held(Watch):
    """Action ``held.run``: records ``context["name"]`` as started, then waits for the
    gate of that name; ``running`` counts runs in progress per customer."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []
        self.gates: dict[str, anyio.Event] = {}
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def gate(self, name: str) -> anyio.Event:
        return self.gates.setdefault(name, anyio.Event())

    async def run(self, ctx: TaskContext) -> str:
        name, customer = str(ctx.context["name"]), str(ctx.context.get("customer_id"))
        self.started.append(name)
        self.running[customer] = self.running.get(customer, 0) + 1
        self.peak[customer] = max(self.peak.get(customer, 0), self.running[customer])
        self.touch()
        try:
            await self.gate(name).wait()
        finally:
            self.running[customer] -= 1
        return name

    async def wait_started(self, *names: str) -> None:
        await self.until(lambda: all(name in self.started for name in names))

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("held.run", self.run)

    @hookimpl
    def wf78_task_event(self, event: TaskEvent) -> None:
        self.touch()


def keyed(most: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "id": "sync",
        "tasks": [
            {"id": "work", "action": "held.run"},
            {"id": "then", "action": "noop", "depends_on": ["work"]},
        ],
        "concurrency_key": "context.customer_id",
        "max_per_key": most,
        **fields,
    }


async def finished(engine: Engine, held: Held, *run_ids: str) -> None:
    await held.until(lambda: all(engine.get_run(r).status in TERMINAL_RUN for r in run_ids))


async def test_runs_of_one_key_run_one_at_a_time_others_are_not_delayed(config: Config) -> None:
    held = Held()
    async with Engine(config(keyed(1)), plugins=[held]) as engine:
        runs = {
            name: await engine.run("sync", {"customer_id": customer, "name": name}, wait=False)
            for name, customer in (("a", "c1"), ("b", "c1"), ("c", "c1"), ("x", "c2"))
        }
        await held.wait_started("a", "x")  # another customer's run starts at once
        assert held.started == ["a", "x"]
        assert [engine.get_run(runs[n].id).status for n in "bc"] == ["pending", "pending"]
        assert engine.get_run(runs["b"].id).tasks["work"].state == "pending"
        held.gate("x").set()
        await finished(engine, held, runs["x"].id)
        assert held.started == ["a", "x"], "c2's run finishing frees nothing of c1"
        held.gate("a").set()
        await held.wait_started("b")
        assert held.started == ["a", "x", "b"]
        held.gate("b").set()
        await held.wait_started("c")
        held.gate("c").set()
        await finished(engine, held, *(run.id for run in runs.values()))
        assert all(engine.get_run(run.id).status == "succeeded" for run in runs.values())
        assert engine.stats().queued == {}
    assert held.peak == {"c1": 1, "c2": 1}


async def test_max_per_key_runs_at_once_and_waiting_runs_go_in_priority_order(
    config: Config,
) -> None:
    held = Held()
    async with Engine(config(keyed(2)), plugins=[held]) as engine:

        async def start(name: str, priority: int = 1) -> str:
            context = {"customer_id": 7, "name": name}
            return (await engine.run("sync", context, priority=priority, wait=False)).id

        first, second = await start("a"), await start("b")
        await held.wait_started("a", "b")
        late = await start("late", priority=5)
        urgent = await start("urgent", priority=0)
        assert engine.stats().queued == {0: 1, 5: 1}  # the waiting runs, by priority
        held.gate("a").set()
        await held.wait_started("urgent")
        assert held.started == ["a", "b", "urgent"]
        for name in ("b", "urgent", "late"):
            held.gate(name).set()
        await finished(engine, held, first, second, late, urgent)
    assert held.started == ["a", "b", "urgent", "late"]
    assert held.peak == {"7": 2}


async def test_a_cancelled_waiting_run_frees_nothing_it_did_not_hold(config: Config) -> None:
    held = Held()
    async with Engine(config(keyed(1)), plugins=[held]) as engine:
        ids = [
            (await engine.run("sync", {"customer_id": "c1", "name": n}, wait=False)).id
            for n in "abc"
        ]
        await held.wait_started("a")
        cancelled = await engine.cancel(ids[1])
        assert cancelled.status == "cancelled"
        assert {task.state for task in cancelled.tasks.values()} == {"cancelled"}
        for _ in range(10):  # let anything wrongly freed start
            await anyio.lowlevel.checkpoint()
        assert held.started == ["a"], "the cancelled run held no slot: c still waits"
        assert engine.get_run(ids[2]).status == "pending"
        held.gate("a").set()
        await held.wait_started("c")
        held.gate("c").set()
        await finished(engine, held, ids[0], ids[2])
        assert [engine.get_run(i).status for i in ids] == ["succeeded", "cancelled", "succeeded"]
        # a running run cancelled gives its key back to the next one
        run_d = await engine.run("sync", {"customer_id": "c1", "name": "d"}, wait=False)
        run_e = await engine.run("sync", {"customer_id": "c1", "name": "e"}, wait=False)
        await held.wait_started("d")
        await engine.cancel(run_d.id)
        await held.wait_started("e")
        held.gate("e").set()
        await finished(engine, held, run_d.id, run_e.id)
        assert engine.get_run(run_e.id).status == "succeeded"
        assert engine.stats().queued == {}
    assert held.peak == {"c1": 1}


async def test_a_run_without_the_field_fails_naming_it(config: Config) -> None:
    held = Held()
    async with Engine(config(keyed(1)), plugins=[held]) as engine:
        for context in ({"name": "n"}, {"name": "n", "customer_id": None}):
            run = await engine.run("sync", context)
            assert run.status == "failed"
            assert run.error is not None and "'customer_id'" in run.error
            assert "concurrency_key 'context.customer_id'" in run.error
            assert {task.state for task in run.tasks.values()} == {"skipped"}
        assert held.started == []
        ok = await engine.run("sync", {"customer_id": "c", "name": "ok"}, wait=False)
        await held.wait_started("ok")  # a failed run held no key
        held.gate("ok").set()
        await finished(engine, held, ok.id)
        assert engine.get_run(ok.id).status == "succeeded"
        assert engine.stats().queued == {}


def test_key_values_are_read_as_text_and_from_nested_objects() -> None:
    assert key_value("context.customer_id", {"customer_id": "acme"}) == "acme"
    assert key_value("context.customer_id", {"customer_id": 1}) == "1"
    assert key_value("context.customer.id", {"customer": {"id": 5}}) == "5"
    assert key_value("context.customer.id", {"customer": "flat"}) is None
    assert key_value("context.customer_id", {}) is None
    assert key_value("context.customer_id", {"customer_id": None}) is None


def problems_of(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(raw)
    return {p.path: p.message for p in raised.value.problems}


TASKS = [{"id": "t", "action": "noop"}]


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"max_per_key": 2}, "workflows[0].max_per_key", "needs `concurrency_key`"),
        ({"concurrency_key": "context.c"}, "workflows[0].max_per_key", "needs `max_per_key`"),
        (
            {"concurrency_key": "customer_id", "max_per_key": 1},
            "workflows[0].concurrency_key",
            'must be "context.<field>"',
        ),
        (
            {"concurrency_key": "context.", "max_per_key": 1},
            "workflows[0].concurrency_key",
            'must be "context.<field>"',
        ),
        (
            {"concurrency_key": "context.a..b", "max_per_key": 1},
            "workflows[0].concurrency_key",
            'must be "context.<field>"',
        ),
        (
            {"concurrency_key": "context.c", "max_per_key": 0},
            "workflows[0].max_per_key",
            "must be >= 1",
        ),
        (
            {
                "concurrency_key": "context.c",
                "max_per_key": 1,
                "trigger": "schedule",
                "schedule": 5,
            },
            "workflows[0].concurrency_key",
            "scheduled run",
        ),
    ],
)
def test_config_errors_name_their_path(fields: dict[str, Any], path: str, message: str) -> None:
    found = problems_of({"workflows": [{"id": "w", "tasks": TASKS, **fields}]})
    assert path in found, found
    assert message in found[path]


def test_a_valid_key_is_accepted() -> None:
    config = parse_config(
        {
            "workflows": [
                {"id": "w", "tasks": TASKS, "concurrency_key": "context.c", "max_per_key": 3}
            ]
        }
    )
    assert (config.workflows[0].concurrency_key, config.workflows[0].max_per_key) == (
        "context.c",
        3,
    )


async def test_runs_resumed_after_a_restart_keep_to_their_key(
    config: Config, tmp_path: Any
) -> None:
    cfg = config(
        keyed(1), engine={"journal": f"sqlite:///{tmp_path}/journal.db", "drain_timeout": 0.2}
    )
    before = Held()
    async with Engine(cfg, plugins=[before]) as engine:
        first = await engine.run("sync", {"customer_id": "c1", "name": "a"}, wait=False)
        second = await engine.run("sync", {"customer_id": "c1", "name": "b"}, wait=False)
        await before.wait_started("a")
    assert before.started == ["a"]  # shutdown cancelled both: the journal resumes them
    after = Held()
    async with Engine(cfg, plugins=[after]) as engine:
        await after.wait_started("a")
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert after.started == ["a"], "the resumed runs share one key: b waits"
        after.gate("a").set()
        await after.wait_started("b")
        after.gate("b").set()
        await finished(engine, after, first.id, second.id)
        assert [engine.get_run(r.id).status for r in (first, second)] == ["succeeded"] * 2
    assert after.peak == {"c1": 1}
