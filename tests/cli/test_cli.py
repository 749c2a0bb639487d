"""The ``wf78`` command line, in-process through ``main`` and once through the console script."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pymysql
import pytest

from wf78_core.cli import main
from wf78_core.data import sharding

SOURCE = """\
[datasources.main]
type = "sqlite"
url = "sqlite:///data/cli.db"

[tables.items]
columns = { name = "text", qty = "int" }
"""

WORKFLOWS = """\
[[workflows]]
id = "chain"

[[workflows.tasks]]
id = "start"
action = "noop"

[[workflows.tasks]]
id = "left"
action = "noop"
depends_on = ["start"]

[[workflows.tasks]]
id = "store"
action = "datasource.execute"
depends_on = ["start"]
params = { action = "add", table = "items", values = { name = "widget", qty = 2 } }

[[workflows.tasks]]
id = "join"
action = "noop"
depends_on = ["left", "store"]

[[workflows]]
id = "broken"

[[workflows.tasks]]
id = "read"
data_source = "main"
params = { action = "get", table = "no_such_table" }

[[workflows.tasks]]
id = "after"
action = "noop"
depends_on = ["read"]
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every database lands in tmp_path and no outer WF78_CONFIG leaks in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WF78_CONFIG", raising=False)
    # Commands put the current directory (and serve its --app-dir) on the module path.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables one row per line


def write(tmp_path: Path, text: str, name: str = "wf78.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


# -- top level ---------------------------------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("validate", "run", "demo", "maintain"):
        assert re.search(rf"^\s+{command}\s+\w", out, re.MULTILINE), out


@pytest.mark.parametrize("command", ["serve", "worker", "run", "maintain"])
def test_the_long_running_commands_offer_json_logs(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--log-format {text,json}" in out and "--log-level" in out, out
    assert "tenant" in out, out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"wf78 {version('wf78')}"


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: wf78" in capsys.readouterr().err


# -- validate ----------------------------------------------------------------------------------


def test_validate_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SOURCE + WORKFLOWS)
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: OK"


# Each file holds problems of one kind (structure, definitions, references); the last
# case mixes all three and every one must still be listed in the same report.
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            'colour = "blue"\n' + SOURCE + '[[workflows]]\nid = "w"\n'
            '[[workflows.tasks]]\nid = "a"\naction = "noop"\nretries = 3\n',
            ["colour: unknown key", "workflows[0].tasks[0].retries: unknown key"],
            id="unknown-keys",
        ),
        pytest.param(
            SOURCE + '[[workflows]]\nid = "w"\ntrigger = "schedule"\nschedule = "every tuesday"\n'
            '[[workflows.tasks]]\nid = "a"\naction = "noop"\ndepends_on = ["c"]\ntimeout = -1\n'
            '[[workflows.tasks]]\nid = "b"\naction = "noop"\ndepends_on = ["ghost"]\n'
            '[[workflows.tasks]]\nid = "c"\naction = "noop"\ndepends_on = ["a"]\n',
            [
                "workflows[0].schedule: bad cron string",
                "workflows[0].tasks[0].timeout: must be positive",
                "workflows[0].tasks[1].depends_on: unknown task 'ghost'",
                "workflows[0].tasks[0].depends_on: dependency cycle",
            ],
            id="definitions",
        ),
        pytest.param(
            SOURCE + '[[workflows]]\nid = "w"\n[[workflows.tasks]]\nid = "a"\naction = "teleport"\n'
            '[[workflows.tasks]]\nid = "b"\ndata_source = "oracle"\ndepends_on = ["a"]\n',
            [
                "workflows[0].tasks[0].action: unknown action 'teleport'",
                "workflows[0].tasks[1].data_source: unknown data source 'oracle'",
            ],
            id="references",
        ),
        pytest.param(
            'colour = "blue"\n' + SOURCE + '[[workflows]]\nid = "w"\n'
            '[[workflows.tasks]]\nid = "a"\naction = "teleport"\ndepends_on = ["b"]\n'
            '[[workflows.tasks]]\nid = "b"\naction = "noop"\ndepends_on = ["a"]\n',
            [
                "colour: unknown key",
                "workflows[0].tasks[0].depends_on: dependency cycle",
                "workflows[0].tasks[0].action: unknown action 'teleport'",
            ],
            id="all-stages-at-once",
        ),
    ],
)
def test_validate_lists_every_problem_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: list[str]
) -> None:
    path = write(tmp_path, body)
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, lines)
    assert lines[-1] == f"{path}: {len(expected)} problems"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("[datasources\nx =", "cannot parse", id="toml-syntax"),
        pytest.param(None, "does not exist", id="missing"),
    ],
)
def test_validate_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "config.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["validate", str(path)]) != 0
    captured = capsys.readouterr()
    assert message in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_validate_non_utf8_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe[engine]\n")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"cannot read {path}")


# -- run ---------------------------------------------------------------------------------------


def test_run_succeeds_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SOURCE + WORKFLOWS)
    code, run = run_json(capsys, ["run", "chain", "--config", str(path), "--json"])
    assert code == 0
    assert run["workflow"] == "chain"
    assert run["status"] == "succeeded"
    assert {task["state"] for task in run["tasks"].values()} == {"succeeded"}
    assert set(run["tasks"]) == {"start", "left", "store", "join"}
    assert run["tasks"]["store"]["data_source"] == "main"
    assert run["tasks"]["store"]["attempts"] == 1
    assert run["results"]["store"]["data_source"] == "main"
    assert (tmp_path / "data" / "cli.db").is_file()  # relative to the config file


def test_run_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SOURCE + WORKFLOWS)
    assert main(["run", "chain", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"store\W+succeeded\W+1\W+main", out), out
    assert "status: succeeded" in out


def test_run_failure_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SOURCE + WORKFLOWS)
    code, run = run_json(capsys, ["run", "broken", "--config", str(path), "--json"])
    assert code == 1
    assert run["status"] == "failed"
    assert run["tasks"]["read"]["state"] == "failed"
    assert "no_such_table" in run["tasks"]["read"]["error"]
    assert run["tasks"]["after"]["state"] == "skipped"


def test_run_uses_wf78_config_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WF78_CONFIG", str(write(tmp_path, SOURCE + WORKFLOWS)))
    code, run = run_json(capsys, ["run", "chain", "--json", "--priority", "0"])
    assert code == 0
    assert run["status"] == "succeeded"


def test_run_embedded_default_with_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = {"operation": {"action": "add", "table": "items", "values": {"name": "pen"}}}
    argv = ["run", "high_priority_db_ops", "--context", json.dumps(context), "--json"]
    code, run = run_json(capsys, argv)
    assert code == 0, run
    assert run["tasks"]["determine_data_source"]["result"]["data_source"] == "default"
    assert run["tasks"]["execute_db_operation"]["data_source"] == "default"
    assert (tmp_path / "wf78.db").is_file()


@pytest.mark.parametrize(
    ("context", "message"),
    [("{not json", "--context is not valid JSON"), ("[1, 2]", "--context must be a JSON object")],
)
def test_run_bad_context_exits_2(
    capsys: pytest.CaptureFixture[str], context: str, message: str
) -> None:
    assert main(["run", "high_priority_db_ops", "--context", context]) == 2
    assert capsys.readouterr().err.startswith(f"wf78: error: {message}")


def test_run_unknown_workflow_lists_known_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SOURCE + WORKFLOWS)
    assert main(["run", "nope", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wf78: error: unknown workflow 'nope'")
    assert "broken, chain" in err


def test_run_invalid_config_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = SOURCE + '[[workflows]]\nid = "w"\n[[workflows.tasks]]\nid = "a"\naction = "teleport"\n'
    assert main(["run", "w", "--config", str(write(tmp_path, body))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wf78: error: workflows[0].tasks[0].action: unknown action")
    assert "Traceback" not in err


def test_run_many_tasks_shows_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = "".join(
        f'[[workflows.tasks]]\nid = "t{i}"\naction = "noop"\n'
        + (f'depends_on = ["t{i - 1}"]\n' if i % 5 else "")
        for i in range(25)
    )
    path = write(tmp_path, SOURCE + '[[workflows]]\nid = "wide"\n' + tasks)
    code = main(["run", "wide", "--config", str(path), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)["status"] == "succeeded"
    assert "25/25" in captured.err  # the progress bar, on stderr so --json stays clean


# -- demo --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_demo_serves_with_traffic_then_stops(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("wf78")
    port = free_port()
    db = tmp_path / "demo" / "demo.db"
    done = subprocess.run(
        [str(script), "demo", "--duration", "3", "--port", str(port), "--db", str(db)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    out = done.stdout
    url = f"http://127.0.0.1:{port}"
    token = re.search(r"admin token: (\S+)", out)
    assert token, out
    # The dashboard link carries the token in its fragment, which never reaches the server
    # (nor its access log); never in a query.
    assert f"{url}/_wf78/#token={token.group(1)}" in out
    assert "?token=" not in out
    for page in ("/_wf78/status", "/_wf78/metrics", "/hello"):
        assert url + page in out
    summary = re.search(r"wf78 demo: served [\d.]+s, (\d+) requests sent, (\d+) errors", out)
    assert summary, out
    assert int(summary.group(1)) >= 20
    assert int(summary.group(2)) == 0, done.stderr
    # The engine closed with the server: the WAL is checkpointed into the database.
    assert db.is_file()
    assert not db.with_name("demo.db-wal").exists()
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM items").fetchone()[0] > 0
        assert connection.execute("SELECT COUNT(*) FROM notes").fetchone()[0] > 0
        assert connection.execute("SELECT COUNT(*) FROM logs").fetchone()[0] > 0
    assert not (tmp_path / "wf78-demo.db").exists()


def test_demo_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "0"]) == 2
    assert "--duration must be a positive number" in capsys.readouterr().err
    assert main(["demo", "--port", "70000"]) == 2
    assert "--port must be between 0 and 65535" in capsys.readouterr().err


def test_serve_bad_target_exits_2(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("wf78")
    done = subprocess.run(
        [str(script), "serve", "no_such_module_78:app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "wf78: error: cannot import module 'no_such_module_78': No module named 'no_such_module_78'"
    )


# -- maintain ----------------------------------------------------------------------------------

MAINTAIN = """\
[datasources.main]
type = "sqlite"
url = "sqlite:///data/maintain.db"
create_tables = false

[tables.items]
columns = { name = "text" }
owner = "cid"

[tables.events]
columns = { what = "text" }
sharding = { type = "daily", retention_days = 1, ahead = 1 }
"""


def sqlite_tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return sorted(row[0] for row in rows)


def test_maintain_creates_missing_tables_and_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharding, "now", lambda: datetime(2025, 1, 31, 8, tzinfo=UTC))
    path = write(tmp_path, MAINTAIN)
    assert main(["maintain", "--config", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "created table items on main",
        "created shard events_20250131 on main",
        "created shard events_20250201 on main",
        "wf78 maintain: 1 tables created, 2 shards created, 0 shards dropped",
    ]
    database = tmp_path / "data" / "maintain.db"
    assert sqlite_tables(database) == ["events_20250131", "events_20250201", "items"]
    # Two days later, with one day's retention, the 31st goes and the 1st stays.
    monkeypatch.setattr(sharding, "now", lambda: datetime(2025, 2, 2, 8, tzinfo=UTC))
    monkeypatch.setenv("WF78_CONFIG", str(path))
    code, report = run_json(capsys, ["maintain", "--json"])
    assert code == 0
    assert report == {
        "created": [
            {"source": "main", "table": "events_20250202"},
            {"source": "main", "table": "events_20250203"},
        ],
        "dropped": [{"source": "main", "table": "events_20250131"}],
        "tables_created": [],
        "columns_added": [],
        "keys_purged": 0,
        "run_keys_purged": 0,
    }
    assert sqlite_tables(database) == [
        "events_20250201",
        "events_20250202",
        "events_20250203",
        "items",
    ]


def test_maintain_creates_missing_mysql_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = f"cli_{uuid4().hex[:8]}_items"
    path = write(
        tmp_path,
        '[datasources.db]\ntype = "mysql"\nurl = "mysql://root@127.0.0.1:3306/test"\n'
        # Starting would create it (the default): here maintain does.
        "create_tables = false\n"
        f'[tables.{table}]\ncolumns = {{ name = "text" }}\nowner = "uid"\n',
    )
    connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test")
    try:
        assert main(["maintain", "--config", str(path)]) == 0
        assert f"created table {table} on db" in capsys.readouterr().out
        with connection.cursor() as cursor:
            cursor.execute(f"SHOW COLUMNS FROM `{table}`")
            assert [row[0] for row in cursor.fetchall()] == ["id", "name", "uid", "upby", "uptime"]
        assert main(["maintain", "--config", str(path)]) == 0
        assert "0 tables created" in capsys.readouterr().out
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
        connection.close()


def test_maintain_migrate_adds_the_columns_tables_lack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "data" / "migrate.db"
    database.parent.mkdir()
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE items (id TEXT PRIMARY KEY, upby TEXT, uptime TEXT)")
        connection.execute("INSERT INTO items (id) VALUES ('kept')")
    path = write(
        tmp_path,
        '[datasources.main]\ntype = "sqlite"\nurl = "sqlite:///data/migrate.db"\n'
        '[tables.items]\ncolumns = { name = "text", qty = "int" }\nowner = "cid"\n',
    )
    # Without --migrate the engine refuses to start, naming the table and each column.
    assert main(["maintain", "--config", str(path)]) == 1
    error = capsys.readouterr().err
    assert "tables.items.columns.name: table 'items' on data source 'main' has no column " in error
    assert "run `wf78 maintain --migrate` to add it" in error
    assert main(["maintain", "--migrate", "--config", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "added column name to items on main",
        "added column qty to items on main",
        "added column cid to items on main",
        "wf78 maintain: 0 tables created, 0 shards created, 0 shards dropped, 3 columns added",
    ]
    with sqlite3.connect(database) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(items)")]
        assert columns == ["id", "upby", "uptime", "name", "qty", "cid"]
        assert connection.execute("SELECT id FROM items").fetchall() == [("kept",)]
    assert main(["maintain", "--config", str(path)]) == 0


# -- the console script ------------------------------------------------------------------------


def test_console_script_exit_status(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("wf78")
    assert script.is_file(), "the package is not installed with its console script"
    path = write(tmp_path, 'colour = "blue"\n')
    done = subprocess.run(
        [str(script), "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert lines[0].startswith("colour: unknown key")
    assert lines[1] == f"{path}: 1 problem"
    assert done.stderr == ""


# -- plugin modules: --plugin on every command, [engine] plugins in the configuration ---------

ACTIONS = """\
from wf78_core import hookimpl


def shout(ctx):
    return str(ctx.params.get("word", "")).upper() + "!"


@hookimpl
def wf78_register_actions(registry):
    registry.add("custom.shout", shout)
"""

LOUD = """\
[[workflows]]
id = "loud"

[[workflows.tasks]]
id = "say"
action = "custom.shout"
params = { word = "hi" }
"""

COMMANDS = {
    "validate": ["validate", "wf78.toml"],
    "run": ["run", "loud"],
    "demo": ["demo"],
    "serve": ["serve", "app:app"],
    "maintain": ["maintain"],
    "worker": ["worker"],
}


@pytest.fixture
def actions(tmp_path: Path) -> str:
    """A fresh plugin module in the current directory that registers ``custom.shout``."""
    name = f"cli_actions_{uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(ACTIONS, encoding="utf-8")
    return name


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_repeatable_plugin_options(command: str) -> None:
    from wf78_core.cli.parser import build_parser

    args = build_parser().parse_args([*COMMANDS[command], "--plugin", "a.b", "--plugin", "c"])
    assert args.plugin == ["a.b", "c"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_plugin_that_cannot_be_imported_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    write(tmp_path, SOURCE + LOUD)
    argv = [*COMMANDS[command], "--plugin", "no_such_module_78"]
    if command in ("run", "maintain", "worker"):
        argv += ["--config", "wf78.toml"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("wf78: error: --plugin 'no_such_module_78' cannot be imported"), err
    assert "No module named 'no_such_module_78'" in err


def test_validate_and_run_with_a_plugin_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], actions: str
) -> None:
    path = write(tmp_path, SOURCE + LOUD)
    assert main(["validate", str(path)]) == 1
    assert "workflows[0].tasks[0].action: unknown action 'custom.shout'" in capsys.readouterr().out
    assert main(["validate", str(path), "--plugin", actions]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: OK"
    code, run = run_json(
        capsys, ["run", "loud", "--config", str(path), "--plugin", actions, "--json"]
    )
    assert code == 0, run
    assert run["results"]["say"] == "HI!"


def test_validate_and_run_with_engine_plugins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], actions: str
) -> None:
    path = write(tmp_path, f'[engine]\nplugins = ["{actions}"]\n' + SOURCE + LOUD)
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: OK"
    code, run = run_json(capsys, ["run", "loud", "--config", str(path), "--json"])
    assert code == 0, run
    assert run["results"]["say"] == "HI!"


def test_validate_names_a_configured_plugin_that_cannot_be_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[engine]\nplugins = ["no_such_module_78"]\nretyr = 1\n' + LOUD)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "engine.retyr: unknown key"
    assert out[1].startswith("engine.plugins[0]: 'no_such_module_78' cannot be imported")
    assert out[2] == "workflows[0].tasks[0].action: unknown action 'custom.shout'"
    assert out[3] == f"{path}: 3 problems"


def test_maintain_with_a_plugin_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], actions: str
) -> None:
    path = write(tmp_path, SOURCE + LOUD)
    assert main(["maintain", "--config", str(path)]) == 1
    assert "unknown action 'custom.shout'" in capsys.readouterr().err
    assert main(["maintain", "--config", str(path), "--plugin", actions]) == 0
    assert "wf78 maintain: " in capsys.readouterr().out


def started_app(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[Any]:
    """Replace the command's server loop: the apps it would have served, collected."""
    apps: list[Any] = []

    def run_server(server: Any, announce: Any, **_: Any) -> None:
        apps.append(server.config.app)

    monkeypatch.setattr(module, "run_server", run_server)
    return apps


def test_serve_registers_plugin_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, actions: str
) -> None:
    from wf78_core.cli import serve

    (tmp_path / "plainapp.py").write_text("async def app(scope, receive, send):\n    pass\n")
    path = write(tmp_path, SOURCE + LOUD)
    apps = started_app(monkeypatch, serve)
    assert main(["serve", "plainapp:app", "--config", str(path), "--plugin", actions]) == 0
    (app,) = apps
    assert app.engine.pm.has_plugin(actions)
    # Several workers build the app themselves, from the environment serve sets.
    monkeypatch.setenv(serve.TARGET_ENV, "plainapp:app")
    monkeypatch.setenv(serve.CONFIG_ENV, str(path))
    monkeypatch.setenv(serve.PLUGINS_ENV, actions)
    assert serve.app_factory().engine.pm.has_plugin(actions)


def test_demo_registers_plugin_options(monkeypatch: pytest.MonkeyPatch, actions: str) -> None:
    from wf78_core.cli import demo

    apps = started_app(monkeypatch, demo)
    assert main(["demo", "--no-traffic", "--plugin", actions]) == 0
    (app,) = apps
    assert app.engine.pm.has_plugin(actions)


def test_console_script_finds_plugins_in_the_current_directory(
    tmp_path: Path, actions: str
) -> None:
    script = Path(sys.executable).with_name("wf78")
    write(tmp_path, SOURCE + LOUD)
    done = subprocess.run(
        [str(script), "run", "loud", "--config", "wf78.toml", "--plugin", actions, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["results"]["say"] == "HI!"
