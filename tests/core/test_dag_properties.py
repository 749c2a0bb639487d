"""Random DAGs: cycles are always refused; valid ones run each task once, in order, capped."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import anyio
import anyio.lowlevel
from hypothesis import given, settings
from hypothesis import strategies as st

from wf78_core import ConfigError, Engine, TaskContext, hookimpl
from wf78_core.config import parse_config

Dag = tuple[list[str], dict[str, list[str]]]


@st.composite
def dags(draw: st.DrawFn, *, cyclic: bool) -> Dag:
    """Task ids and their dependencies, in a shuffled order.

    Each task depends only on earlier ones; ``cyclic`` adds one edge i -> j and a back
    edge j -> i (j earlier), which always closes a cycle.
    """
    size = draw(st.integers(min_value=2 if cyclic else 1, max_value=9))
    ids = draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
            min_size=size,
            max_size=size,
            unique=True,
        )
    )
    deps: dict[str, list[str]] = {}
    for index, task_id in enumerate(ids):
        earlier = ids[:index]
        deps[task_id] = (
            draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        )
    if cyclic:
        later = draw(st.integers(min_value=1, max_value=size - 1))
        earlier_index = draw(st.integers(min_value=0, max_value=later - 1))
        late, early = ids[later], ids[earlier_index]
        if early not in deps[late]:
            deps[late].append(early)
        deps[early].append(late)
    order = draw(st.permutations(ids))
    return list(order), deps


def workflow(dag: Dag, max_concurrent: int = 10) -> dict[str, Any]:
    order, deps = dag
    return {
        "engine": {"drain_timeout": 2.0},
        "datasources": {"mem": {"type": "memory"}},
        "workflows": [
            {
                "id": "random",
                "max_concurrent": max_concurrent,
                "tasks": [
                    {"id": task_id, "action": "tally", "depends_on": deps[task_id]}
                    for task_id in order
                ],
            }
        ],
    }


@settings(max_examples=60, deadline=None)
@given(dag=dags(cyclic=True))
def test_cycles_are_always_rejected(dag: Dag) -> None:
    _, deps = dag
    try:
        parse_config(workflow(dag))
    except ConfigError as error:
        cycles = [p for p in error.problems if p.message.startswith("dependency cycle: ")]
    else:
        raise AssertionError("a cyclic workflow was accepted")
    assert len(cycles) == 1
    assert cycles[0].path.startswith("workflows[0].tasks[")
    listed = cycles[0].message.removeprefix("dependency cycle: ").split(" -> ")
    assert listed[0] == listed[-1]
    # every step of the listed cycle is a real dependency
    for task_id, dependency in pairwise(listed):
        assert dependency in deps[task_id], (task_id, dependency)


class Tally:
    """The ``tally`` action: logs start and end, counts how many run at once."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []
        self.running = 0
        self.peak = 0

    async def tally(self, ctx: TaskContext) -> str:
        self.log.append(("start", ctx.run_id, ctx.task.id))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            for _ in range(1 + len(ctx.task.id) % 3):
                await anyio.lowlevel.checkpoint()
        finally:
            self.running -= 1
        self.log.append(("end", ctx.run_id, ctx.task.id))
        return ctx.task.id

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("tally", self.tally)


@settings(max_examples=40, deadline=None)
@given(
    dag=dags(cyclic=False),
    max_concurrent=st.integers(min_value=1, max_value=4),
    runs=st.integers(min_value=1, max_value=2),
)
def test_valid_dags_run_each_task_once_in_order(dag: Dag, max_concurrent: int, runs: int) -> None:
    order, deps = dag
    tally = Tally()

    async def main() -> list[Any]:
        finished: list[Any] = []
        async with Engine(workflow(dag, max_concurrent), plugins=[tally]) as engine:

            async def one() -> None:
                finished.append(await engine.run("random"))

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(runs):
                        tg.start_soon(one)
        return finished

    finished = anyio.run(main)
    for run in finished:
        assert run.status == "succeeded"
        assert run.results == {task_id: task_id for task_id in order}
        mine = [(event, task_id) for event, run_id, task_id in tally.log if run_id == run.id]
        starts = [task_id for event, task_id in mine if event == "start"]
        assert sorted(starts) == sorted(order), "every task exactly once"
        ended: set[str] = set()
        for event, task_id in mine:
            if event == "start":
                assert set(deps[task_id]) <= ended, f"{task_id} started before its deps"
            else:
                ended.add(task_id)
    assert tally.peak <= max_concurrent
    assert tally.running == 0
