"""Hypothesis against configuration loading and workflow definitions: wrong types, unknown
keys, dependency cycles, bad cron strings, NaN and infinite numbers, odd unicode ids.

What must hold: ``collect_config`` never raises, and names every problem with a path that
starts at a key the input has; ``parse_config`` raises ``ConfigError`` (and nothing else)
exactly when there are problems; files that are not TOML or JSON are a ``ConfigError`` too;
and a configuration that passes is usable (an ``Engine`` can be built from it).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wf78_core import ConfigError, Engine
from wf78_core.config import (
    Config,
    check_definitions,
    collect_config,
    load_config,
    parse_config,
    read_config,
)
from wf78_core.definitions import Operation, TaskDefinition, WorkflowDefinition
from wf78_core.errors import Problem

TOP = ("engine", "datasources", "agents", "workflows", "tables", "auth")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ODD = ["\x00", "\u202e", "\u200f", "\ufeff", "\ud800", "😀", "名前", "'", '"', ";", "--", "`", "\n"]
odd_text = st.lists(st.sampled_from(ODD) | st.text(max_size=4), max_size=4).map("".join)
ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
ids = ident | odd_text
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),  # NaN and the infinities included: TOML can say nan and inf
    st.sampled_from([0, 1, -1, 0.5, math.nan, math.inf, -math.inf, 10**400]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ids, inner, max_size=3),
    max_leaves=8,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A fitting value, or anything at all (wrong types)."""
    return st.one_of(strategy, strategy, anything)


def with_unknown_keys(strategy: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    extra = st.dictionaries(ids, anything, max_size=2)
    return st.tuples(strategy, extra | st.just({})).map(lambda pair: {**pair[1], **pair[0]}) | (
        strategy
    )


cron = st.sampled_from(
    ["*/5 * * * *", "0 3 * * *", "5 * * * *", "61 * * * *", "* * *", "", "@daily", "a b c d e"]
) | st.lists(
    st.sampled_from(["*", "*/0", "1-", "99", "MON", "?", "L", "#", "1,2"]), max_size=7
).map(" ".join)


@st.composite
def tasks(draw: Any) -> list[dict[str, Any]]:
    """Tasks whose depends_on name each other (cycles included), unknown ids and odd text."""
    names = draw(st.lists(ids, min_size=0, max_size=5))
    out = []
    for name in names:
        task: dict[str, Any] = {"id": name}
        if names and draw(st.booleans()):
            task["depends_on"] = draw(st.lists(st.sampled_from(names) | ids, max_size=3))
        for key, value in draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "action": maybe(
                        st.sampled_from(["datasource.execute", "nope", "tables.maintain"])
                    ),
                    "timeout": maybe(numbers),
                    "retry": maybe(st.integers(min_value=-3, max_value=5)),
                    "data_source": maybe(st.sampled_from(["db", "sqlite", "ghost"])),
                    "auto_select": maybe(st.booleans()),
                    "params": maybe(st.dictionaries(ids, anything, max_size=2)),
                    "fallback": maybe(st.lists(st.sampled_from(["db", "ghost"]), max_size=2)),
                    "name": maybe(odd_text),
                },
            )
        ).items():
            task[key] = value
        out.append(draw(with_unknown_keys(st.just(task))))
    return out


workflow = with_unknown_keys(
    st.fixed_dictionaries(
        {"id": maybe(ids)},
        optional={
            "tasks": maybe(tasks()),
            "priority": maybe(st.integers(min_value=-(10**12), max_value=10**12)),
            "max_concurrent": maybe(st.integers(min_value=-2, max_value=10)),
            "trigger": maybe(st.sampled_from(["api", "event", "schedule", "cron"])),
            "event": maybe(odd_text),
            "schedule": maybe(cron | numbers),
            "name": maybe(odd_text),
        },
    )
)

table = with_unknown_keys(
    st.fixed_dictionaries(
        {
            "columns": maybe(
                st.lists(ids, max_size=4)
                | st.dictionaries(
                    ids,
                    st.sampled_from(["text", "int", "float", "bool", "json", "datetime", "blob"]),
                    max_size=4,
                )
            )
        },
        optional={
            "owner": maybe(st.sampled_from(["cid", "uid", "gid"])),
            "route": maybe(st.sampled_from(["api/demo", "api/x\n", "nope", "api/ü"]) | odd_text),
            "data_source": maybe(st.sampled_from(["db", "ghost"])),
            "kind": maybe(st.sampled_from(["core", "log", "nope"])),
            "sharding": maybe(
                st.fixed_dictionaries(
                    {"type": maybe(st.sampled_from(["daily", "monthly", "hourly"]))},
                    optional={"retention_days": maybe(st.integers(-2, 9))},
                )
            ),
            "public_read": maybe(st.booleans()),
            "search_mirror": maybe(st.sampled_from(["db", "es"])),
            "cache_mirror": maybe(st.sampled_from(["db", "cache"])),
            "cache_ttl": maybe(numbers),
        },
    )
)

datasource = with_unknown_keys(
    st.fixed_dictionaries(
        {"type": maybe(st.sampled_from(["sqlite", "memory", "redis", "nope"]))},
        optional={
            "url": maybe(st.sampled_from(["sqlite:///:memory:", "redis://x"]) | odd_text),
            "pool_size": maybe(st.integers(-1, 5)),
            "timeout": maybe(numbers),
        },
    )
)

identity = with_unknown_keys(
    st.fixed_dictionaries(
        {},
        optional={
            "uid": maybe(odd_text),
            "cid": maybe(odd_text),
            "uname": maybe(odd_text),
            "roles": maybe(st.lists(odd_text, max_size=2)),
            "max_priority": maybe(st.integers(min_value=-(10**12), max_value=10**12)),
        },
    )
)

configs = with_unknown_keys(
    st.fixed_dictionaries(
        {},
        optional={
            "engine": maybe(
                with_unknown_keys(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            name: maybe(numbers)
                            for name in (
                                "queue_size",
                                "overload_timeout",
                                "max_running",
                                "aging_seconds",
                                "drain_timeout",
                                "retry_backoff",
                                "retry_backoff_max",
                                "default_timeout",
                                "submit_priority",
                                "run_history",
                            )
                        },
                    )
                )
            ),
            "datasources": maybe(st.dictionaries(ids, maybe(datasource), max_size=3)),
            "agents": maybe(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "allocator": maybe(odd_text),
                        "health_interval": maybe(numbers),
                        "pool": maybe(
                            st.lists(
                                st.fixed_dictionaries(
                                    {"id": maybe(ids), "capabilities": maybe(st.lists(ids))}
                                ),
                                max_size=3,
                            )
                        ),
                    },
                )
            ),
            "workflows": maybe(st.lists(maybe(workflow), max_size=3)),
            "tables": maybe(st.dictionaries(ids, maybe(table), max_size=3)),
            "auth": maybe(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "tokens": maybe(st.dictionaries(odd_text, maybe(identity), max_size=2)),
                        "guest": maybe(identity),
                    },
                )
            ),
        },
    )
)


def shown(key: Any) -> str:
    """A key as config paths show it (lone surrogates escaped)."""
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def starts_at(path: str, key: str) -> bool:
    return path == key or path.startswith((f"{key}.", f"{key}["))


def has_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_problems(raw: Any, problems: list[Problem]) -> None:
    for problem in problems:
        assert isinstance(problem, Problem)
        assert isinstance(problem.path, str) and isinstance(problem.message, str)
        assert problem.message.strip(), problem
        if isinstance(raw, dict):
            # Every problem has a path, and it starts at a key the input has.
            assert problem.path or "" in raw, problem
            assert any(starts_at(problem.path, shown(key)) for key in raw), (problem, list(raw))
            problem.path.encode("utf-8")  # printable: a lone surrogate is escaped
            problem.message.encode("utf-8")
        assert "Traceback" not in problem.message


@FUZZ
@given(raw=configs)
def test_collect_config_names_every_problem_with_its_path(raw: Any) -> None:
    config, problems = collect_config(raw)
    assert isinstance(config, Config)
    check_problems(raw, problems)
    try:
        parsed = parse_config(raw)
    except ConfigError as error:
        assert problems, error
        assert error.problems == problems
        assert str(error) == "\n".join(str(p) for p in problems)
    else:
        assert not problems
        assert parsed == config
        msgspec.json.encode(parsed)  # what wf78 validate --json would print


@settings(max_examples=60, deadline=None)
@given(raw=configs)
@pytest.mark.anyio
async def test_engine_check_adds_plugin_problems_without_raising(raw: Any) -> None:
    problems = await Engine.check(raw)
    check_problems(raw, problems)
    if not problems:
        Engine(raw)  # what passes the checks builds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@FUZZ
@given(raw=anything | st.lists(anything) | odd_text)
def test_a_config_that_is_not_a_table(raw: Any) -> None:
    if isinstance(raw, dict):
        return
    config, problems = collect_config(raw)
    assert config == Config()
    assert [p.message for p in problems] == ["the configuration must be a table/object"]


@FUZZ
@given(
    names=st.lists(ids, min_size=2, max_size=6, unique=True),
    edges=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=10),
)
def test_every_cycle_is_found_and_named(names: list[str], edges: list[tuple[int, int]]) -> None:
    depends: dict[str, list[str]] = {name: [] for name in names}
    for a, b in edges:
        if a < len(names) and b < len(names) and a != b:
            depends[names[a]].append(names[b])
    raw = {
        "workflows": [{"id": "w", "tasks": [{"id": n, "depends_on": depends[n]} for n in names]}]
    }
    _, problems = collect_config(raw)
    cycles = [p for p in problems if "dependency cycle" in p.message]
    # The reference: a cycle exists iff a topological order does not.
    remaining = {name: set(deps) for name, deps in depends.items()}
    while True:
        ready = [name for name, deps in remaining.items() if not deps]
        if not ready:
            break
        for name in ready:
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    assert bool(cycles) == bool(remaining), (depends, problems)
    for problem in cycles:
        assert re.fullmatch(r"workflows\[0\]\.tasks\[\d\]\.depends_on", problem.path)
        ring = problem.message.removeprefix("dependency cycle: ").split(" -> ")
        assert ring[0] == ring[-1] and set(ring) <= set(names)
        for task, dependency in itertools.pairwise(ring):
            assert dependency in depends[task]


@FUZZ
@given(schedule=cron | numbers)
def test_a_schedule_is_a_valid_cron_or_positive_seconds(schedule: Any) -> None:
    raw = {
        "workflows": [
            {"id": "w", "trigger": "schedule", "schedule": schedule, "tasks": [{"id": "t"}]}
        ]
    }
    _, problems = collect_config(raw)
    check_problems(raw, problems)
    where = {p.path for p in problems}
    if isinstance(schedule, int | float) and not isinstance(schedule, bool):
        try:
            seconds = float(schedule)
        except OverflowError:  # an integer no float holds: msgspec refuses it
            assert "workflows[0].schedule" in where, problems
            return
        good = math.isfinite(seconds) and seconds > 0
        assert ("workflows[0].schedule" not in where) == good, problems
    else:
        from croniter import croniter

        assert ("workflows[0].schedule" not in where) == croniter.is_valid(schedule), problems


@FUZZ
@given(
    raw=st.dictionaries(ids, anything, max_size=6)
    | st.fixed_dictionaries({"id": maybe(ids)}, optional={"tasks": maybe(tasks())}),
    kind=st.sampled_from([WorkflowDefinition, TaskDefinition, Operation]),
)
def test_definitions_only_raise_validation_errors_naming_the_field(raw: Any, kind: Any) -> None:
    try:
        definition = msgspec.convert(raw, kind)
    except UnicodeEncodeError:
        # msgspec cannot name a key that is no Unicode; collect_config reports it first.
        assert has_surrogate(raw)
        assert any("lone surrogate" in p.message for p in collect_config({"x": raw})[1])
    except msgspec.ValidationError as error:
        message = str(error)
        assert message
        if "`$." in message or "field `" in message:
            return  # the path or the field, as msgspec says it
        assert "Expected `object`" in message or "must" in message, message
    else:
        assert isinstance(definition, kind)
        if isinstance(definition, WorkflowDefinition):
            check_definitions(Config(workflows=(definition,)))


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(max_size=200)
    | configs.map(lambda raw: json.dumps(raw, default=str))
    | st.sampled_from(["[engine]\nqueue_size = nan", "x = ", "{", "[[workflows]]\nid = 1"]),
    suffix=st.sampled_from([".toml", ".json", ".TOML", ".txt"]),
)
def test_files_are_parsed_or_refused_with_config_error(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"wf78{suffix}"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            config = load_config(path)
        except ConfigError as error:
            assert error.problems and all(p.message for p in error.problems)
        else:
            assert isinstance(config, Config)
            assert read_config(path) is not None


# -- one change to a valid configuration ------------------------------------------------------

BASE: dict[str, Any] = {
    "engine": {"queue_size": 10, "default_timeout": 5.0, "journal": "memory"},
    "datasources": {"db": {"type": "memory"}},
    "agents": {"health_interval": 5.0, "pool": [{"id": "ag", "capabilities": ["db"]}]},
    "workflows": [
        {
            "id": "w",
            "trigger": "schedule",
            "schedule": "*/5 * * * *",
            "tasks": [
                {"id": "a", "action": "datasource.execute", "timeout": 1.0},
                {"id": "b", "depends_on": ["a"], "retry": 1, "data_source": "db"},
            ],
        }
    ],
    "tables": {
        "items": {
            "columns": {"name": "text"},
            "owner": "cid",
            "route": "api/x",
            "data_source": "db",
        }
    },
    "auth": {"tokens": {"t": {"uid": "u", "roles": ["admin"], "max_priority": 1}}},
}


def locations(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and index of BASE, as paths from its root."""
    out = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += locations(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += locations(item, (*path, index))
    return out


def dotted(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def changed(path: tuple[Any, ...], change: str, new: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(json.dumps(BASE))
    parent: Any = raw
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if change == "replace":
        parent[last] = new
    elif change == "delete" and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict) and isinstance(new, str) and new not in parent:
        parent[new] = 1  # an unknown key beside it
    return raw


@pytest.mark.anyio
async def test_the_base_configuration_is_valid() -> None:
    assert collect_config(BASE)[1] == []
    assert await Engine.check(BASE) == []


@FUZZ
@given(
    path=st.sampled_from(locations(BASE)),
    change=st.sampled_from(["replace", "replace", "delete", "add"]),
    new=anything | ids,
)
def test_one_change_is_reported_where_it_was_made(
    path: tuple[Any, ...], change: str, new: Any
) -> None:
    raw = changed(path, change, new)
    _, problems = collect_config(raw)
    check_problems(raw, problems)
    if not problems:
        return
    if change == "add":
        path = (*path[:-1], shown(new))
    # The section the change was made in (workflows[0], tables.items, engine, ...) is
    # where a problem is reported; cross-references stay inside it too.
    section = dotted(path[:2]) if path[0] in ("workflows", "tables") else str(path[0])
    if path[0] == "datasources" or path[:2] == ("agents", "pool"):
        section = ""  # a source renamed or removed is missed where it is named
    assert any(p.path.startswith(section) for p in problems), (dotted(path), problems)
