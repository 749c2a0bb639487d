"""``[engine] plugins``: plugin modules named in the configuration are registered by every
engine built from it (``Engine(config)`` itself imports them), and a module that cannot be
imported is a configuration problem at ``engine.plugins[i]`` naming the import error."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from wf78_core import ConfigError, Engine, Wf78Middleware

pytestmark = pytest.mark.anyio

ACTIONS = """\
from wf78_core import hookimpl


def shout(ctx):
    return str(ctx.params.get("word", "")).upper() + "!"


@hookimpl
def wf78_register_actions(registry):
    registry.add("custom.shout", shout)
"""


@pytest.fixture
def actions_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a fresh importable module registering the action ``custom.shout``."""
    name = f"wf78_test_actions_{uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(ACTIONS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def shouting(*plugins: str, **engine: Any) -> dict[str, Any]:
    return {
        "engine": {"journal": "memory", "plugins": list(plugins), **engine},
        "workflows": [
            {
                "id": "loud",
                "tasks": [{"id": "say", "action": "custom.shout", "params": {"word": "hi"}}],
            }
        ],
    }


async def test_a_configured_plugin_module_provides_its_actions(actions_module: str) -> None:
    assert await Engine.check(shouting(actions_module)) == []
    async with Engine(shouting(actions_module)) as engine:
        run = await engine.run("loud")
    assert run.status == "succeeded", run
    assert run.tasks["say"].result == "HI!"


async def test_without_the_plugin_the_action_is_unknown() -> None:
    problems = await Engine.check(shouting())
    assert [(p.path, p.message) for p in problems] == [
        ("workflows[0].tasks[0].action", "unknown action 'custom.shout'")
    ]


async def test_a_config_file_names_its_plugins(actions_module: str, tmp_path: Path) -> None:
    path = tmp_path / "wf78.toml"
    path.write_text(
        f'[engine]\njournal = "memory"\nplugins = ["{actions_module}"]\n\n'
        '[[workflows]]\nid = "loud"\n\n'
        '[[workflows.tasks]]\nid = "say"\naction = "custom.shout"\n',
        encoding="utf-8",
    )
    assert await Engine.check(path) == []
    async with Engine.from_file(path) as engine:
        assert (await engine.run("loud")).status == "succeeded"


async def test_the_middleware_engine_has_them(actions_module: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    middleware = Wf78Middleware(app, config=shouting(actions_module))
    async with middleware.engine as engine:
        assert "custom.shout" in engine.actions


def test_a_module_that_cannot_be_imported_is_a_config_problem(actions_module: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Engine(shouting(actions_module, "no_such_module_78"))
    (problem,) = raised.value.problems
    assert problem.path == "engine.plugins[1]"
    assert "'no_such_module_78'" in problem.message
    assert "No module named 'no_such_module_78'" in problem.message


async def test_a_module_that_fails_its_own_import_is_named_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"wf78_test_broken_{uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('no database url')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = await Engine.check(shouting(name))
    found = {p.path: p.message for p in problems}
    assert "RuntimeError: no database url" in found["engine.plugins[0]"]


async def test_check_names_the_import_problem_with_every_other_one(actions_module: str) -> None:
    raw = shouting("no_such_module_78", actions_module, queue_sise=1)
    raw["workflows"][0]["tasks"].append({"id": "b", "action": "teleport", "depends_on": ["c"]})
    found = {p.path: p.message for p in await Engine.check(raw)}
    assert set(found) == {
        "engine.queue_sise",
        "engine.plugins[0]",
        "workflows[0].tasks[1].depends_on",
        "workflows[0].tasks[1].action",  # the importable plugin still provides custom.shout
    }, found


async def test_plugins_must_be_a_list_of_names() -> None:
    found = {p.path: p.message for p in await Engine.check({"engine": {"plugins": "a.b"}})}
    assert list(found) == ["engine.plugins"]
