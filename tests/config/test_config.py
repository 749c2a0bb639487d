"""Configuration: structure, cross-field checks and plugin-dependent checks name their path."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from wf78_core import ConfigError, Engine, load_config
from wf78_core.config import DEFAULT_CONFIG_TOML, parse_config
from wf78_core.errors import Problem

pytestmark = pytest.mark.anyio


def problems_of(raw: dict[str, Any]) -> dict[str, str]:
    """path -> message for every problem ``parse_config`` reports."""
    with pytest.raises(ConfigError) as raised:
        parse_config(raw)
    found = {p.path: p.message for p in raised.value.problems}
    assert str(raised.value) == "\n".join(str(p) for p in raised.value.problems)
    return found


def one_workflow(*tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"workflows": [{"id": "w", "tasks": list(tasks), **fields}]}


async def check(raw: dict[str, Any]) -> dict[str, str]:
    """path -> message for every problem ``Engine.check`` reports (plugins included)."""
    return {p.path: p.message for p in await Engine.check(raw)}


# -- structure -------------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    found = problems_of({"engines": {}, "datasources": {}})
    assert list(found) == ["engines"]
    assert "unknown key" in found["engines"]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (one_workflow({"id": "a", "colour": "red"}), "workflows[0].tasks[0].colour"),
        ({"workflows": [{"id": "w", "tasks": [{"id": "a"}], "owner": "x"}]}, "workflows[0].owner"),
        ({"engine": {"queue": 3}}, "engine.queue"),
        ({"agents": {"pool": [{"id": "a", "capabilities": [], "x": 1}]}}, "agents.pool[0].x"),
        ({"tables": {"T": {"columns": ["a"], "sharded": True}}}, "tables.T.sharded"),
    ],
)
def test_unknown_nested_key_names_its_path(raw: dict[str, Any], path: str) -> None:
    found = problems_of(raw)
    assert path in found, found
    assert "unknown" in found[path]


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        ({"engine": {"queue_size": "big"}}, "engine.queue_size", "int"),
        (one_workflow({"id": "a", "timeout": "soon"}), "workflows[0].tasks[0].timeout", "float"),
        (one_workflow({"id": "a", "retry": 1.5}), "workflows[0].tasks[0].retry", "int"),
        (one_workflow({"id": "a", "depends_on": "b"}), "workflows[0].tasks[0].depends_on", "array"),
        (one_workflow({"id": "a"}, trigger="cron"), "workflows[0].trigger", "cron"),
        ({"workflows": {"id": "w"}}, "workflows", "array"),
        ({"datasources": {"m": "memory"}}, "datasources.m", "table"),
        (
            {"datasources": {"m": {"type": "memory", "pool_size": "x"}}},
            "datasources.m.pool_size",
            "int",
        ),
    ],
)
def test_wrong_types_name_their_path(raw: dict[str, Any], path: str, words: str) -> None:
    found = problems_of(raw)
    assert path in found, found
    assert words in found[path]


def test_duplicate_ids() -> None:
    found = problems_of(
        {
            "workflows": [
                {"id": "w", "tasks": [{"id": "a"}, {"id": "b"}, {"id": "a"}]},
                {"id": "w", "tasks": [{"id": "x"}]},
            ],
            "agents": {"pool": [{"id": "g", "capabilities": []}, {"id": "g", "capabilities": []}]},
        }
    )
    assert "duplicate task id 'a'" in found["workflows[0].tasks[2].id"]
    assert "duplicate workflow id 'w'" in found["workflows[1].id"]
    assert "duplicate agent id 'g'" in found["agents.pool[1].id"]


def test_unknown_depends_on() -> None:
    found = problems_of(one_workflow({"id": "a"}, {"id": "b", "depends_on": ["a", "zz"]}))
    assert found == {"workflows[0].tasks[1].depends_on": "unknown task 'zz'"}


@pytest.mark.parametrize(
    ("tasks", "cycle"),
    [
        (
            [
                {"id": "a", "depends_on": ["c"]},
                {"id": "b", "depends_on": ["a"]},
                {"id": "c", "depends_on": ["b"]},
            ],
            "a -> c -> b -> a",
        ),
        (
            [{"id": "x"}, {"id": "y", "depends_on": ["x", "z"]}, {"id": "z", "depends_on": ["y"]}],
            "y -> z -> y",
        ),
    ],
)
def test_cycle_is_listed(tasks: list[dict[str, Any]], cycle: str) -> None:
    found = problems_of(one_workflow(*tasks))
    (path, message), *_ = found.items()
    assert path.startswith("workflows[0].tasks[") and path.endswith("].depends_on")
    assert message == f"dependency cycle: {cycle}"


def test_self_dependency() -> None:
    found = problems_of(one_workflow({"id": "a", "depends_on": ["a"]}))
    assert "itself" in found["workflows[0].tasks[0].depends_on"]


@pytest.mark.parametrize(
    ("task", "path", "words"),
    [
        ({"id": "a", "timeout": -1}, "workflows[0].tasks[0].timeout", "positive"),
        ({"id": "a", "timeout": 0}, "workflows[0].tasks[0].timeout", "positive"),
        ({"id": "a", "retry": -1}, "workflows[0].tasks[0].retry", ">= 0"),
        ({"id": "a", "auto_select": False}, "workflows[0].tasks[0].auto_select", "data_source"),
        ({"id": ""}, "workflows[0].tasks[0].id", "empty"),
    ],
)
def test_task_values(task: dict[str, Any], path: str, words: str) -> None:
    found = problems_of(one_workflow(task))
    assert words in found[path]


def test_auto_select_off_with_a_data_source_is_fine() -> None:
    parse_config(one_workflow({"id": "a", "auto_select": False, "data_source": "mem"}))


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        ({"trigger": "schedule", "schedule": "every monday"}, "workflows[0].schedule", "cron"),
        ({"trigger": "schedule", "schedule": "61 * * * *"}, "workflows[0].schedule", "cron"),
        ({"trigger": "schedule"}, "workflows[0].schedule", "needs"),
        ({"trigger": "schedule", "schedule": -5}, "workflows[0].schedule", "positive"),
        ({"trigger": "event"}, "workflows[0].event", "needs"),
        ({"max_concurrent": 0}, "workflows[0].max_concurrent", ">= 1"),
    ],
)
def test_workflow_values(fields: dict[str, Any], path: str, words: str) -> None:
    found = problems_of(one_workflow({"id": "a"}, **fields))
    assert words in found[path]


@pytest.mark.parametrize("schedule", ["*/5 * * * *", "0 3 * * mon", 0.5, 60])
def test_good_schedules(schedule: Any) -> None:
    config = parse_config(one_workflow({"id": "a"}, trigger="schedule", schedule=schedule))
    assert config.workflows[0].schedule == schedule


def test_empty_workflow() -> None:
    assert "at least one task" in problems_of(one_workflow())["workflows[0].tasks"]


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"columns": ["ok", "not ok"]}, "identifier"),
        ({"columns": ["1st"]}, "identifier"),
        ({"columns": ["name; drop table x"]}, "identifier"),
        ({"columns": ["uptime"]}, "base column"),
        ({"columns": ["cid"]}, "base column"),
        ({"columns": ["a"], "route": "v1/demo"}, "apisys/apimicro"),
        ({"columns": ["a"], "route": "api/demo/extra"}, "apisys/apimicro"),
        ({"columns": ["a"], "owner": "gid"}, "gid"),
    ],
)
def test_bad_tables(table: dict[str, Any], words: str) -> None:
    found = problems_of({"tables": {"T": table}})
    assert any(
        path.startswith("tables.T") and words in message for path, message in found.items()
    ), found


def test_bad_table_name() -> None:
    found = problems_of({"tables": {"bad-name": {"columns": ["a"]}}})
    assert "identifier" in found["tables.bad-name"]


def test_good_table() -> None:
    config = parse_config(
        {
            "tables": {
                "Items": {
                    "columns": {"name": "text", "qty": "int"},
                    "owner": "cid",
                    "route": "api/demo",
                    "sharding": {"type": "daily", "retention_days": 3},
                }
            }
        }
    )
    schema = config.tables["Items"].schema()
    assert list(schema) == ["id", "name", "qty", "cid", "upby", "uptime"]
    assert schema["qty"] == "int"


def test_several_problems_are_reported_together() -> None:
    found = problems_of(
        {
            "workflows": [
                {
                    "id": "w",
                    "tasks": [
                        {"id": "a", "timeout": -1, "depends_on": ["nope"]},
                        {"id": "b", "retry": -3},
                    ],
                },
                {"id": "s", "trigger": "schedule", "schedule": "bad", "tasks": [{"id": "x"}]},
            ]
        }
    )
    assert set(found) == {
        "workflows[0].tasks[0].timeout",
        "workflows[0].tasks[0].depends_on",
        "workflows[0].tasks[1].retry",
        "workflows[1].schedule",
    }
    structural = problems_of(
        {"bogus": 1, "engine": {"queue_size": "x"}, "tables": {"T": {"columns": ["a b"]}}}
    )
    assert set(structural) == {"bogus", "engine.queue_size", "tables.T"}


def test_engine_settings_are_checked() -> None:
    found = problems_of({"engine": {"queue_size": 0, "max_running": 1}})
    assert "queue_size" in found["engine"]
    found = problems_of({"engine": {"default_timeout": -1}})
    assert "default_timeout" in found["engine"]


# -- checks that need the plugins ------------------------------------------------------------


async def test_unknown_data_source_everywhere_it_can_be_named() -> None:
    found = await check(
        {
            "datasources": {"mem": {"type": "memory"}},
            "workflows": [
                {
                    "id": "w",
                    "tasks": [{"id": "a", "data_source": "ghost1", "fallback": ["mem", "ghost2"]}],
                }
            ],
            "tables": {"T": {"columns": ["a"], "data_source": "ghost3"}},
            "agents": {"pool": [{"id": "g", "capabilities": ["mem", "ghost4"]}]},
        }
    )
    assert set(found) == {
        "workflows[0].tasks[0].data_source",
        "workflows[0].tasks[0].fallback[1]",
        "tables.T.data_source",
        "agents.pool[0].capabilities[1]",
    }
    for path in found:
        assert "unknown data source" in found[path]
    assert "'ghost1'" in found["workflows[0].tasks[0].data_source"]


async def test_a_source_type_is_a_valid_data_source_name() -> None:
    raw = {
        "datasources": {"mem": {"type": "memory"}},
        "workflows": [{"id": "w", "tasks": [{"id": "a", "data_source": "memory"}]}],
    }
    assert await check(raw) == {}


async def test_unknown_action_and_source_type() -> None:
    found = await check(
        {
            "datasources": {"x": {"type": "floppy"}},
            "workflows": [{"id": "w", "tasks": [{"id": "a", "action": "datasource.exec"}]}],
        }
    )
    assert "unknown action 'datasource.exec'" in found["workflows[0].tasks[0].action"]
    assert "unknown data-source type 'floppy'" in found["datasources.x.type"]
    assert "memory" in found["datasources.x.type"]  # the message lists what is known


async def test_unknown_allocator() -> None:
    found = await check({"agents": {"allocator": "round_robin"}})
    assert "round_robin" in found["agents.allocator"]
    assert "least_load" in found["agents.allocator"]


async def test_type_specific_options_are_checked_with_a_path() -> None:
    found = await check({"datasources": {"m": {"type": "memory", "latency": "slow"}}})
    assert list(found) == ["datasources.m.latency"]
    found = await check({"datasources": {"m": {"type": "memory", "colour": "red"}}})
    assert "datasources.m.colour" in found
    assert "unknown" in found["datasources.m.colour"]


async def test_engine_refuses_to_start_with_problems() -> None:
    engine = Engine({"datasources": {"x": {"type": "floppy"}}})
    with pytest.raises(ConfigError, match="floppy"):
        async with engine:
            pytest.fail("must not start")


def test_constructing_with_a_bad_config_raises() -> None:
    with pytest.raises(ConfigError) as raised:
        Engine({"workflows": [{"id": "w", "tasks": [{"id": "a", "depends_on": ["a"]}]}]})
    assert raised.value.problems == [
        Problem("workflows[0].tasks[0].depends_on", "a task cannot depend on itself")
    ]


# -- files and the default -------------------------------------------------------------------

RAW = {
    "engine": {"queue_size": 50},
    "datasources": {"mem": {"type": "memory", "latency": 0.001}},
    "workflows": [
        {
            "id": "w",
            "priority": 2,
            "trigger": "event",
            "event": "go",
            "tasks": [{"id": "a", "action": "noop"}, {"id": "b", "depends_on": ["a"]}],
        }
    ],
}


def test_json_and_toml_files_load_alike(tmp_path: Path) -> None:
    json_file = tmp_path / "wf78.json"
    json_file.write_text(json.dumps(RAW))
    toml_file = tmp_path / "wf78.toml"
    toml_file.write_text(
        """
[engine]
queue_size = 50

[datasources.mem]
type = "memory"
latency = 0.001

[[workflows]]
id = "w"
priority = 2
trigger = "event"
event = "go"

[[workflows.tasks]]
id = "a"
action = "noop"

[[workflows.tasks]]
id = "b"
depends_on = ["a"]
"""
    )
    from_json, from_toml = load_config(json_file), load_config(toml_file)
    assert from_json == from_toml == parse_config(RAW)
    assert from_json.engine.queue_size == 50
    assert from_json.datasources["mem"].options == {"latency": 0.001}
    assert from_json.workflows[0].tasks[1].depends_on == ("a",)


async def test_engine_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "wf78.json"
    path.write_text(json.dumps(RAW))
    async with Engine.from_file(path) as engine:
        run_ids = await engine.emit("go")
        assert len(run_ids) == 1


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(broken)
    broken_toml = tmp_path / "broken.toml"
    broken_toml.write_text("[engine\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(broken_toml)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"workflows": [{"id": "w", "tasks": [{"id": "a", "retry": -1}]}]}))
    with pytest.raises(ConfigError, match=r"workflows\[0\]\.tasks\[0\]\.retry"):
        load_config(bad)


def test_config_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match="table"):
        parse_config([1, 2])  # type: ignore[arg-type]


async def test_embedded_default_is_valid() -> None:
    default = load_config(None)
    assert default == parse_config(tomllib.loads(DEFAULT_CONFIG_TOML))
    assert default.datasources["default"].type == "sqlite"
    assert [w.id for w in default.workflows] == ["high_priority_db_ops", "logging_workflow"]
    first = default.workflows[0]
    assert (first.priority, first.max_concurrent) == (0, 3)
    assert first.tasks[1].depends_on == ("determine_data_source",)
    assert await Engine.check(None) == []
