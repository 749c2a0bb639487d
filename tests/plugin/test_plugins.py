"""Plugins: a real third-party package, duplicate and misspelt hooks, blocking, async hooks."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import Probe

from wf78_core import ConfigError, Engine, Operation, TaskContext, TaskEvent, hookimpl
from wf78_core.plugin.manager import make_plugin_manager
from wf78_core.plugin.registry import Registry
from wf78_memory import MemorySource

Config = Callable[..., dict[str, Any]]
THIRDPARTY = Path(__file__).resolve().parents[1] / "fixtures" / "thirdparty"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WF78_")}
    env.update(extra)
    return env


def test_third_party_package_installed_with_pip(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(THIRDPARTY, source)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    assert (target / "wf78_thirdparty" / "__init__.py").is_file()
    done = subprocess.run(
        [sys.executable, str(source / "demo.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(target)),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "thirdparty" in report["entry_points"]
    assert "memory" in report["entry_points"]
    assert report["problems"] == []
    # the strategy (asked before the trylast built-ins) sends history to the ledger...
    assert report["history"] == {
        "data_source": "ledger",
        "source_type": "thirdparty",
        "reason": "thirdparty: history belongs in a ledger",
        # ...and the allocator named in [agents] gives work to the last agent
        "agent": "last",
        "value": "tx-1",
    }
    assert report["plain"] == {"data_source": "scratch", "agent": "last"}
    assert report["run"] == {
        "status": "succeeded",
        "chosen": {"data_source": "ledger", "reason": "thirdparty: history belongs in a ledger"},
        "written_to": "ledger",
    }
    assert report["ledger"] == ["tx-1", "tx-2"]


def test_without_the_package_its_type_is_unknown(tmp_path: Path) -> None:
    """The same demo fails validation when the plugin is not installed."""
    done = subprocess.run(
        [sys.executable, str(THIRDPARTY / "demo.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert done.returncode != 0
    assert "unknown data-source type 'thirdparty'" in done.stderr


# -- duplicates, misspellings, blocking -----------------------------------------------------


class SecondMemory:
    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("memory", MemorySource)
        registry.add("fancy", MemorySource)


class ThirdMemory:
    @hookimpl
    def wf78_register_datasources(self, registry: Any) -> None:
        registry.add("fancy", MemorySource)


class ActionsOne:
    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("shared.name", lambda ctx: 1)


class ActionsTwo:
    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("shared.name", lambda ctx: 2)


class NoopAgain:
    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("noop", lambda ctx: "mine")


@pytest.mark.anyio
async def test_a_plugin_action_replaces_the_built_in_action() -> None:
    workflow = {"id": "w", "tasks": [{"id": "a", "action": "noop"}]}
    async with Engine({"workflows": [workflow]}, plugins=[NoopAgain()]) as engine:
        run = await engine.run("w")
    assert run.tasks["a"].result == "mine"


@pytest.mark.anyio
async def test_duplicate_data_source_type_names_both_plugins(config: Config) -> None:
    engine = Engine(config(), plugins=[SecondMemory(), ThirdMemory()])
    with pytest.raises(ConfigError) as raised:
        async with engine:
            pytest.fail("must not start")
    message = str(raised.value)
    assert "data-source type 'fancy' registered twice" in message
    assert "test_plugins.SecondMemory" in message
    assert "test_plugins.ThirdMemory" in message


@pytest.mark.anyio
async def test_a_plugin_type_replaces_the_built_in_type(config: Config) -> None:
    """SecondMemory registers "memory" again: the built-in steps aside instead of failing."""
    async with Engine(config(), plugins=[SecondMemory()]) as engine:
        result = await engine.submit(Operation(action="noop", data_source="mem"))
    assert result.data_source == "mem"
    assert engine.source_types.get("memory") is MemorySource


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("plugins", "names"),
    [
        ([ActionsOne(), ActionsTwo()], ["test_plugins.ActionsOne", "test_plugins.ActionsTwo"]),
    ],
)
async def test_duplicate_action_names_both_plugins(
    config: Config, plugins: list[Any], names: list[str]
) -> None:
    (problem,) = await Engine.check(config(), plugins=plugins)
    assert "registered twice" in problem.message
    for name in names:
        assert name in problem.message
    with pytest.raises(ConfigError, match="registered twice"):
        async with Engine(config(), plugins=plugins):
            pytest.fail("must not start")


def test_two_instances_of_one_plugin_class_get_distinct_names() -> None:
    pm = make_plugin_manager([ActionsOne(), ActionsOne()])
    names = {name for name, _ in pm.list_name_plugin()}
    assert {"test_plugins.ActionsOne", "test_plugins.ActionsOne#2"} <= names


class Misspelt:
    @hookimpl
    def wf78_register_datasource(self, registry: Any) -> None:
        registry.add("never", MemorySource)


def test_misspelt_hook_fails_at_once(config: Config) -> None:
    with pytest.raises(ConfigError) as raised:
        Engine(config(), plugins=[Misspelt()])
    message = str(raised.value)
    assert "wf78_register_datasource" in message
    assert "unknown hook" in message
    assert "test_plugins.Misspelt" in message


@pytest.mark.anyio
async def test_disable_plugins_blocks_the_memory_plugin(
    monkeypatch: pytest.MonkeyPatch, config: Config
) -> None:
    assert await Engine.check(config()) == []
    monkeypatch.setenv("WF78_DISABLE_PLUGINS", " selection , memory")
    problems = await Engine.check(config())
    assert [p.path for p in problems] == ["datasources.mem.type"]
    assert "unknown data-source type 'memory'" in problems[0].message
    pm = make_plugin_manager()
    assert pm.is_blocked("memory") and pm.is_blocked("selection")
    assert pm.get_plugin("sqlite") is not None
    with pytest.raises(ConfigError, match="memory"):
        async with Engine(config()):
            pytest.fail("must not start")


def test_a_module_plugin_already_loaded_is_not_registered_twice(config: Config) -> None:
    engine = Engine(config(), plugins=["wf78_memory"])
    memory = [name for name, plugin in engine.pm.list_name_plugin() if plugin is not None]
    assert memory.count("memory") == 1
    assert "wf78_memory" not in memory


@pytest.mark.anyio
async def test_trace_hooks_writes_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], config: Config
) -> None:
    monkeypatch.setenv("WF78_TRACE_HOOKS", "1")
    async with Engine(config(), plugins=[SyncPlugin()]) as engine:
        await engine.submit(Operation(action="add", table="t", values={}))
    err = capsys.readouterr().err
    assert "wf78_register_datasources [memory]" in err
    assert "wf78_register_actions [sync_plugin]" in err
    assert "wf78_select_datasource [sync_plugin]" in err


def test_trace_hooks_never_prints_request_headers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], config: Config
) -> None:
    monkeypatch.setenv("WF78_TRACE_HOOKS", "1")
    from wf78_core.plugin.manager import HookChain

    class Authenticator:
        @hookimpl
        def wf78_authenticate(self, scope: Any) -> None:
            return None

    engine = Engine(config(), plugins=[Authenticator()])
    chain = HookChain(engine.pm, "wf78_authenticate")
    scope = {"type": "http", "path": "/x", "headers": [(b"authorization", b"Bearer s3cret")]}
    for _, function, _ in chain.impls:
        function(scope=scope)
    err = capsys.readouterr().err
    assert "wf78_authenticate" in err and "/x" in err
    assert "s3cret" not in err and "<1 headers>" in err


# -- sync and async hooks --------------------------------------------------------------------


class AsyncPlugin:
    """Every hook as a coroutine function."""

    __name__ = "async_plugin"

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []
        self.allocations: list[list[str]] = []
        self.seen = anyio.Event()

    @hookimpl
    async def wf78_register_datasources(self, registry: Any) -> None:
        await anyio.lowlevel.checkpoint()
        registry.add("async_memory", MemorySource)

    @hookimpl
    async def wf78_register_actions(self, registry: Any) -> None:
        async def double(ctx: TaskContext) -> int:
            await anyio.lowlevel.checkpoint()
            return int(ctx.context["n"]) * 2

        registry.add("async.double", double)

    @hookimpl
    async def wf78_select_datasource(self, operation: Operation, candidates: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        if operation.kind == "temp":
            return "async_memory"  # a type name: the engine resolves it to a source
        return None

    @hookimpl
    async def wf78_allocate_agent(self, agents: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        self.allocations.append([agent.id for agent in agents])
        return agents[-1]

    @hookimpl
    async def wf78_task_event(self, event: TaskEvent) -> None:
        await anyio.lowlevel.checkpoint()
        self.events.append(event)
        if event.state == "succeeded":
            self.seen.set()


class SyncPlugin:
    """The same hooks as plain functions."""

    __name__ = "sync_plugin"

    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("sync.triple", lambda ctx: int(ctx.context["n"]) * 3)

    @hookimpl
    def wf78_select_datasource(self, operation: Operation, candidates: Any) -> Any:
        return "plain" if operation.kind == "core" else None

    @hookimpl
    def wf78_task_event(self, event: TaskEvent) -> None:
        self.events.append(event.state)


@pytest.mark.anyio
@pytest.mark.parametrize("allocator", ["async_plugin", "least_load"])
async def test_sync_and_async_hooks_both_work(config: Config, allocator: str) -> None:
    async_plugin, sync_plugin = AsyncPlugin(), SyncPlugin()
    cfg = config(
        {
            "id": "w",
            "tasks": [
                {"id": "double", "action": "async.double"},
                {"id": "triple", "action": "sync.triple"},
            ],
        },
        datasources={"plain": {"type": "memory"}, "quick": {"type": "async_memory"}},
        agents={
            "allocator": allocator,
            "pool": [
                {"id": "a1", "capabilities": ["plain", "quick"]},
                {"id": "a2", "capabilities": ["plain", "quick"]},
            ],
        },
    )
    async with Engine(cfg, plugins=[async_plugin, sync_plugin]) as engine:
        run = await engine.run("w", {"n": 7})
        assert run.results == {"double": 14, "triple": 21}
        temp = await engine.submit(Operation(action="add", table="t", values={}, kind="temp"))
        core = await engine.submit(Operation(action="add", table="t", values={}, kind="core"))
        with anyio.fail_after(5):
            await async_plugin.seen.wait()
    assert (temp.data_source, temp.source_type) == ("quick", "async_memory")
    assert core.data_source == "plain"
    if allocator == "async_plugin":
        assert (temp.agent, core.agent) == ("a2", "a2")
        assert async_plugin.allocations == [["a1", "a2"], ["a1", "a2"]]
    else:  # an allocator not named in [agents] is not asked
        assert (temp.agent, core.agent) == ("a1", "a1")
        assert async_plugin.allocations == []
    assert {e.state for e in async_plugin.events if e.task == "double"} >= {"queued", "running"}
    assert sync_plugin.events.count("succeeded") >= 2


@pytest.mark.anyio
async def test_explicit_data_source_wins_over_every_strategy(config: Config) -> None:
    asked: list[str] = []

    class Greedy:
        @hookimpl
        def wf78_select_datasource(self, operation: Operation, candidates: Any) -> Any:
            asked.append(operation.action)
            return "b"

    cfg = config(datasources={"a": {"type": "memory"}, "b": {"type": "memory"}})
    async with Engine(cfg, plugins=[Greedy()]) as engine:
        chosen = await engine.submit(Operation(action="add", table="t", values={}))
        explicit = await engine.submit(
            Operation(action="add", table="t", values={}, data_source="a", kind="cache")
        )
    assert (chosen.data_source, chosen.reason) == ("b", "strategy")
    assert (explicit.data_source, explicit.reason) == ("a", "explicit data_source")
    assert asked == ["add"]


@pytest.mark.anyio
async def test_probe_plugin_is_observed_in_order(probe: Probe, config: Config) -> None:
    cfg = config({"id": "w", "tasks": [{"id": "a", "action": "probe.record"}]})
    async with Engine(cfg, plugins=[probe]) as engine:
        run = await engine.run("w")
    assert probe.states(run.id) == [("a", "queued"), ("a", "running"), ("a", "succeeded")]


def test_a_third_party_type_replaces_the_built_in_of_that_name() -> None:
    """Built-ins register with ``default=True`` and step aside; plain duplicates still fail."""
    registry: Registry[Any] = Registry("data-source type")
    registry.owner = "plugin 'better'"
    registry.add("sqlite", "better:Source")
    registry.owner = "plugin 'sqlite'"
    registry.add("sqlite", "wf78_sqlite.adapter:SQLiteSource", default=True)
    assert registry["sqlite"] == "better:Source"
    registry.add("memory", "wf78_memory:MemorySource", default=True)
    registry.owner = "plugin 'late'"
    registry.add("memory", "late:Memory")  # a built-in added first still gives way
    assert registry["memory"] == "late:Memory"
    with pytest.raises(
        ConfigError, match="registered twice: by plugin 'late' and by plugin 'again'"
    ):
        registry.owner = "plugin 'again'"
        registry.add("memory", "again:Memory")


def test_heavy_drivers_load_only_for_configured_sources() -> None:
    code = (
        "import sys, anyio\n"
        "from wf78_core import Engine\n"
        "async def main():\n"
        "    async with Engine({'datasources': {'m': {'type': 'memory'}}}):\n"
        "        pass\n"
        "anyio.run(main)\n"
        "print(sorted(m for m in ('elasticsearch', 'aiomysql', 'redis') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- the SDK: what plugins import, and drivers as extras ---------------------------------------

ROOT = Path(__file__).resolve().parents[2]
# type -> (the package that registers it, the factory it names, its driver, the extra)
DRIVERS = {
    "mysql": ("wf78_mysql", "MySQLSource", "aiomysql", "mysql"),
    "postgres": ("wf78_postgres", "PostgresSource", "asyncpg", "postgres"),
    "redis": ("wf78_redis", "RedisSource", "redis", "redis"),
    "elasticsearch": (
        "wf78_elasticsearch",
        "ElasticsearchSource",
        "elasticsearch",
        "elasticsearch",
    ),
}


def _wf78_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import of wf78_core in ``path``, wherever it is
    (top level, functions, ``TYPE_CHECKING`` blocks). ``from wf78_core import X`` reaches
    the module ``wf78_core.X`` unless ``X`` is one of the root package's public names."""
    import wf78_core

    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module != "wf78_core":
                found.append((node.lineno, node.module))
                continue
            for alias in node.names:
                public = alias.name in wf78_core.__all__
                found.append((node.lineno, "wf78_core" if public else f"wf78_core.{alias.name}"))
    return [(line, module) for line, module in found if module.split(".")[0] == "wf78_core"]


def test_plugins_import_only_wf78_core_or_its_sdk() -> None:
    files = sorted((ROOT / "plugins").rglob("*.py"))
    files += sorted((THIRDPARTY / "wf78_thirdparty").rglob("*.py"))
    assert len(files) > 30
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in _wf78_imports(path)
        if module not in ("wf78_core", "wf78_core.plugin")
    ]
    assert wrong == []


def test_the_sdk_exports_what_plugins_need() -> None:
    import wf78_core.plugin as sdk

    wanted = {
        "hookimpl", "Registry", "DataSource", "DataSourceFactory", "SourceInfo", "SourceSpec",
        "TableSchema", "convert_options", "ColumnType", "Operation", "Result", "TaskDefinition",
        "ConfigError", "DataSourceError", "InvalidOperation", "OperationError", "snowflake_id",
        "explicit_key", "generated_ids", "is_auto", "AgentInfo", "Identity", "Scope",
        "require_driver", "TaskEvent",
    }  # fmt: skip
    assert wanted <= set(sdk.__all__)
    assert all(hasattr(sdk, name) for name in sdk.__all__)
    # Names plugins share with the root package are the same objects.
    import wf78_core

    for name in set(sdk.__all__) & set(wf78_core.__all__):
        assert getattr(sdk, name) is getattr(wf78_core, name), name


def test_the_engine_agent_is_what_allocators_see() -> None:
    from wf78_core import Agent
    from wf78_core.plugin import AgentInfo

    agent = Agent("a1", ["db"], 4, 0)
    assert isinstance(agent, AgentInfo)
    assert (agent.capacity, agent.running, agent.load, agent.has_free_slot) == (4, 0, 0.0, True)


def test_require_driver_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wf78_core.plugin import MissingDriver, require_driver

    assert require_driver("json", "json", what="x") is sys.modules["json"]
    with pytest.raises(ConfigError) as raised:
        require_driver("wf78_no_such_driver", "nothing", what="data source type 'none'")
    assert str(raised.value) == (
        "data source type 'none' needs the wf78_no_such_driver package: "
        'pip install "wf78[nothing]"'
    )
    # The driver is there, but one of its own dependencies is not: say which.
    (tmp_path / "wf78_half_driver.py").write_text("import wf78_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDriver) as half:
        require_driver("wf78_half_driver", "half", what="thing")
    assert 'pip install "wf78[half]"' in str(half.value)
    assert "wf78_missing_dependency" in str(half.value)
    assert half.value.extra == "half" and half.value.module == "wf78_half_driver"


@pytest.mark.parametrize("source_type", sorted(DRIVERS))
def test_a_missing_driver_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, source_type: str
) -> None:
    from wf78_core.plugin import Registry
    from wf78_core.plugin.datasource import load_factory

    package, factory, driver, extra = DRIVERS[source_type]
    plugin = importlib.import_module(package)
    registry: Registry[Any] = Registry("data-source type")
    plugin.wf78_register_datasources(registry=registry)
    # As if the driver were not installed (None in sys.modules makes its import fail).
    monkeypatch.setitem(sys.modules, driver, None)
    install = f'pip install "wf78[{extra}]"'
    with pytest.raises(ConfigError) as raised:
        load_factory(registry[source_type])
    assert str(raised.value) == (
        f"data source type '{source_type}' needs the {driver} package: {install}"
    )
    with pytest.raises(ConfigError) as named:
        load_factory(registry[source_type], what=f"data source 'db' (type {source_type})")
    assert str(named.value) == (
        f"data source 'db' (type {source_type}) needs the {driver} package: {install}"
    )
    with pytest.raises(ConfigError, match=re.escape(install)):
        getattr(plugin, factory)
    monkeypatch.undo()
    assert load_factory(registry[source_type]) is getattr(plugin, factory)


@pytest.mark.anyio
@pytest.mark.parametrize("source_type", sorted(DRIVERS))
async def test_a_configured_source_without_its_driver_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, source_type: str
) -> None:
    _, _, driver, extra = DRIVERS[source_type]
    monkeypatch.setitem(sys.modules, driver, None)
    config = {"datasources": {"db": {"type": source_type, "url": "x://127.0.0.1:1"}}}
    install = f'pip install "wf78[{extra}]"'
    (problem,) = await Engine.check(config)
    assert f"needs the {driver} package: {install}" in problem.message
    with pytest.raises(ConfigError, match=re.escape(install)):
        async with Engine(config):
            pytest.fail("must not start")
    # Not configured, not needed: the embedded default starts without any of the drivers.
    async with Engine({"datasources": {"m": {"type": "memory"}}}) as engine:
        assert (await engine.submit(Operation(action="noop"))).data_source == "m"


def test_a_bare_install_serves_the_embedded_default(tmp_path: Path) -> None:
    """No aiomysql, redis or elasticsearch at all: the SDK, the engine on its SQLite default
    and the middleware import and run; a MySQL source names the extra to install."""
    code = (
        "import sys\n"
        "for name in ('aiomysql', 'pymysql', 'redis', 'hiredis', 'elasticsearch',\n"
        "             'elastic_transport'):\n"
        "    sys.modules[name] = None\n"
        "import anyio\n"
        "import wf78_core.plugin\n"
        "from wf78_core import ConfigError, Engine, Operation, Wf78Middleware\n"
        "async def main():\n"
        "    async with Engine() as engine:\n"
        "        added = await engine.submit(Operation(action='add', table='items',\n"
        "                                              values={'name': 'pen'}))\n"
        "        print(added.data_source)\n"
        "    try:\n"
        "        async with Engine({'datasources': {'db': {'type': 'mysql'}}}):\n"
        "            pass\n"
        "    except ConfigError as error:\n"
        "        print(error)\n"
        "anyio.run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "default"
    assert lines[1].endswith('needs the aiomysql package: pip install "wf78[mysql]"')
