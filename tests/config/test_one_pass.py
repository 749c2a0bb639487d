"""Validation in one pass: a structural problem (an unknown key, a wrong type, a bad enum
value, a value its struct refuses) never hides the semantic ones (cycles, unknown tasks,
sources and actions, bad cron strings); each is named once, with its path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wf78_core import ConfigError, Engine
from wf78_core.config import collect_config, parse_config

pytestmark = pytest.mark.anyio


async def checked(raw: dict[str, Any]) -> dict[str, str]:
    """path -> message of every problem ``Engine.check`` reports; each path named once."""
    problems = await Engine.check(raw)
    paths = [p.path for p in problems]
    assert len(paths) == len(set(paths)), problems
    return {p.path: p.message for p in problems}


def task(**fields: Any) -> dict[str, Any]:
    return fields


# The example: a typo, a dependency cycle and an unknown source, in one workflow.
async def test_a_typo_a_cycle_and_an_unknown_source_in_one_report() -> None:
    found = await checked(
        {
            "engine": {"queue_sise": 10},
            "datasources": {"db": {"type": "memory"}},
            "workflows": [
                {
                    "id": "w",
                    "tasks": [
                        task(id="a", retyr=3, depends_on=["b"]),
                        task(id="b", depends_on=["a"], data_source="ghost"),
                    ],
                }
            ],
        }
    )
    assert set(found) == {
        "engine.queue_sise",
        "workflows[0].tasks[0].retyr",
        "workflows[0].tasks[0].depends_on",
        "workflows[0].tasks[1].data_source",
    }, found
    assert "unknown key" in found["workflows[0].tasks[0].retyr"]
    assert "dependency cycle" in found["workflows[0].tasks[0].depends_on"]
    assert "unknown data source 'ghost'" in found["workflows[0].tasks[1].data_source"]


async def test_every_kind_of_problem_at_once() -> None:
    found = await checked(
        {
            "datasources": {"db": {"type": "memory", "pool_size": 0}},
            "workflows": [
                {
                    "id": "w",
                    "trigger": "schedule",
                    "schedule": "every tuesday",
                    "priority": "high",
                    "tasks": [
                        task(id="a", action="teleport", retry="twice"),
                        task(id="b", depends_on=["zz"], timeout=-1, fallback=["db", "ghost"]),
                    ],
                },
                {"id": "e", "trigger": "cron", "tasks": [task(id="x", data_source="db")]},
            ],
            "tables": {
                "items": {"columns": ["name"], "owner": "org", "data_source": "nowhere"},
                "notes": {"columns": ["ok", "not ok"], "data_source": "nowhere"},
            },
            "agents": {"pool": [{"id": "g", "capabilities": ["db", "ghost"], "concurency": 2}]},
        }
    )
    assert set(found) == {
        # structure
        "datasources.db",  # pool_size must be >= 1: the source still counts as configured
        "workflows[0].priority",
        "workflows[0].tasks[0].retry",
        "workflows[1].trigger",
        "tables.items.owner",
        "tables.notes",  # a column name that is no identifier
        "agents.pool[0].concurency",
        # definitions
        "workflows[0].schedule",
        "workflows[0].tasks[1].depends_on",
        "workflows[0].tasks[1].timeout",
        # references
        "workflows[0].tasks[0].action",
        "workflows[0].tasks[1].fallback[1]",
        "tables.items.data_source",
        "tables.notes.data_source",
        "agents.pool[0].capabilities[1]",
    }, found
    assert "'org'" in found["tables.items.owner"]
    assert "cron" in found["workflows[0].schedule"]
    assert "'cron'" in found["workflows[1].trigger"]


def test_parse_config_raises_once_with_both_kinds() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            {"workflows": [{"id": "w", "colour": "red", "tasks": [task(id="a", depends_on=["a"])]}]}
        )
    assert [p.path for p in raised.value.problems] == [
        "workflows[0].colour",
        "workflows[0].tasks[0].depends_on",
    ]


@pytest.mark.parametrize(
    ("broken", "path"),
    [
        pytest.param({"retyr": 3}, "workflows[0].tasks[1].retyr", id="unknown-key"),
        pytest.param({"retry": "x"}, "workflows[0].tasks[1].retry", id="wrong-type"),
        pytest.param({"depends_on": "a"}, "workflows[0].tasks[1].depends_on", id="not-a-list"),
        pytest.param({"id": 7}, "workflows[0].tasks[1].id", id="id-wrong-type"),
        pytest.param({}, "workflows[0].tasks[1].id", id="id-missing"),
    ],
)
def test_a_broken_task_keeps_the_others_and_their_paths(broken: dict[str, Any], path: str) -> None:
    base = {"id": "b"} if "id" not in broken and broken else {}
    _, problems = collect_config(
        {
            "workflows": [
                {
                    "id": "w",
                    "tasks": [
                        task(id="a"),
                        {**base, **broken},
                        task(id="c", depends_on=["ghost"]),
                        task(id="d", depends_on=["d"]),
                    ],
                }
            ]
        }
    )
    found = {p.path: p.message for p in problems}
    assert set(found) == {
        path,
        "workflows[0].tasks[2].depends_on",
        "workflows[0].tasks[3].depends_on",
    }, found


def test_a_task_that_is_not_a_table_keeps_the_indexes_of_the_others() -> None:
    _, problems = collect_config(
        {"workflows": [{"id": "w", "tasks": [5, task(id="b", depends_on=["ghost"])]}]}
    )
    assert {p.path for p in problems} == {
        "workflows[0].tasks[0]",
        "workflows[0].tasks[1].depends_on",
    }, problems


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"trigger": "schedule", "schedule": True}, "workflows[0].schedule"),
        ({"trigger": "event", "event": 3}, "workflows[0].event"),
        ({"tasks": "a"}, "workflows[0].tasks"),
        ({"id": 3}, "workflows[0].id"),
    ],
)
def test_a_repaired_value_is_not_reported_again(fields: dict[str, Any], path: str) -> None:
    """A bad value stands aside for the checks; what its absence would say is not added."""
    _, problems = collect_config({"workflows": [{"id": "w", "tasks": [task(id="a")], **fields}]})
    assert [p.path for p in problems] == [path], problems


async def test_a_source_that_failed_its_own_check_is_still_configured() -> None:
    found = await checked(
        {
            "datasources": {"db": {"pool_size": 2}},  # no type
            "tables": {"items": {"columns": ["a"], "data_source": "db"}},
            "workflows": [{"id": "w", "tasks": [task(id="a", data_source="db")]}],
        }
    )
    assert list(found) == ["datasources.db.type"], found
    assert "missing" in found["datasources.db.type"]


async def test_a_bad_column_type_does_not_hide_the_table_source() -> None:
    found = await checked(
        {"tables": {"items": {"columns": {"a": "blob", "b": "int"}, "data_source": "ghost"}}}
    )
    assert set(found) == {"tables.items.columns[...]", "tables.items.data_source"}, found


def test_a_bad_engine_value_does_not_hide_the_workflows() -> None:
    _, problems = collect_config(
        {
            "engine": {"queue_size": 0, "backend": "kafka"},
            "workflows": [{"id": "w", "tasks": [task(id="a", depends_on=["b"])]}],
        }
    )
    paths = [p.path for p in problems]
    assert paths == ["engine.backend", "engine", "workflows[0].tasks[0].depends_on"], problems


def test_many_problems_in_one_value_are_all_named() -> None:
    tasks = [task(id=f"t{i}", retyr=i) for i in range(150)]
    _, problems = collect_config({"workflows": [{"id": "w", "tasks": tasks}]})
    assert {p.path for p in problems} == {f"workflows[0].tasks[{i}].retyr" for i in range(150)}


# -- a typo never hides anything ---------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "d"])
values = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.sampled_from(["x", "a"]))
task_bodies = st.fixed_dictionaries(
    {"id": names | values},
    optional={
        "depends_on": st.lists(names, max_size=3) | values,
        "retry": st.integers(-1, 2) | values,
        "timeout": st.floats(-1, 5) | values,
        "action": st.sampled_from(["noop", "teleport"]) | values,
        "data_source": st.sampled_from(["db", "ghost"]) | values,
    },
)
workflow_bodies = st.fixed_dictionaries(
    {"id": st.sampled_from(["w", "v"]) | values, "tasks": st.lists(task_bodies, max_size=4)},
    optional={
        "trigger": st.sampled_from(["api", "schedule", "cron"]) | values,
        "schedule": st.sampled_from(["*/5 * * * *", "every day", 30]) | values,
        "priority": st.integers(-1, 3) | values,
    },
)


def with_typos(raw: dict[str, Any], typo: str) -> dict[str, Any]:
    """``raw`` with the unknown key ``typo`` in every workflow and task."""
    workflows = []
    for workflow in raw["workflows"]:
        tasks = [{**task, typo: 1} for task in workflow["tasks"]]
        workflows.append({**workflow, "tasks": tasks, typo: 1})
    return {**raw, "workflows": workflows}


@settings(max_examples=200, deadline=None)
@given(workflows=st.lists(workflow_bodies, min_size=1, max_size=3))
def test_an_unknown_key_adds_its_own_problem_and_hides_none(
    workflows: list[dict[str, Any]],
) -> None:
    raw: dict[str, Any] = {"workflows": workflows}
    _, problems = collect_config(raw)
    _, with_typo = collect_config(with_typos(raw, "retyr"))
    typos = {p for p in with_typo if p.path.endswith(".retyr")}
    assert all(p.message == "unknown key" for p in typos)
    assert len(typos) == len(workflows) + sum(len(w["tasks"]) for w in workflows)
    assert set(with_typo) - typos == set(problems), (problems, with_typo)
