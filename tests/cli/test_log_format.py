"""``--log-format json`` (``wf78 serve``, ``wf78 worker``, ``wf78 run``, ``wf78 maintain``):
one JSON object per line on stderr, wf78's records with the run, task, workflow, data
source, tenant (and trace ids when tracing is on); no token or row value in any line,
uvicorn's access lines included (their query string is left out). A run's tenant is the
one it was started as, in this process and in a worker that takes it from Redis."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.cli.test_serve import free_port, wait_until_answers
from tests.cluster.distributed_util import Process
from wf78_core import Engine, hookimpl
from wf78_core.cli import main
from wf78_core.cli.parser import build_parser
from wf78_core.cli.serve import logging_options
from wf78_core.cluster.wire import TENANT_FIELD, TRACE_FIELD, context_of
from wf78_core.core.fairness import TENANT, tenant
from wf78_core.core.logcontext import ContextFilter
from wf78_core.events import TaskEvent
from wf78_core.http.middleware import Wf78Middleware

ADMIN = "log-admin-" + secrets.token_hex(8)
USER = "log-user-" + secrets.token_hex(8)
ROW_VALUE = "row-secret-" + secrets.token_hex(8)

APP = """\
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})
"""

# Sets a tracer provider (so records carry trace ids) and adds an action that logs.
PLUGIN = """\
import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from wf78_core import hookimpl

trace.set_tracer_provider(TracerProvider())


def speak(ctx):
    logging.getLogger("wf78.test.speaker").warning("task %s ran", ctx.task.id)


@hookimpl
def wf78_register_actions(registry):
    registry.add("test.speak", speak)
"""

CONFIG = f"""\
[datasources.main]
type = "sqlite"
url = "sqlite:///served.db"

[datasources.down]
type = "mysql"
url = "mysql://root@127.0.0.1:1/test"

[tables.items]
columns = {{ name = "text" }}
owner = "cid"
route = "api/shop"
data_source = "main"

[tables.lost]
columns = {{ name = "text" }}
owner = "cid"
route = "api/shop"
data_source = "down"

[[workflows]]
id = "logged"

[[workflows.tasks]]
id = "speak"
action = "test.speak"
data_source = "main"

[auth.tokens.{ADMIN}]
uid = "u-root"
cid = "ops"
uname = "root"
roles = ["admin"]

[auth.tokens.{USER}]
uid = "u-ada"
cid = "acme"
uname = "ada"
"""


def test_text_is_the_default_and_keeps_uvicorns_logging() -> None:
    args = build_parser().parse_args(["serve", "m:app"])
    assert args.log_format == "text"
    assert logging_options(args) == {}
    json_args = build_parser().parse_args(["serve", "m:app", "--log-format", "json"])
    assert "log_config" in logging_options(json_args)


@pytest.mark.parametrize(
    ("argv", "level"),
    [(["worker"], "info"), (["run", "w"], "warning"), (["maintain"], "warning")],
)
def test_worker_run_and_maintain_take_the_log_options(argv: list[str], level: str) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_format, args.log_level) == ("text", level)
    args = build_parser().parse_args([*argv, "--log-format", "json", "--log-level", "debug"])
    assert (args.log_format, args.log_level) == ("json", "debug")


def test_serve_logs_one_json_object_per_line(tmp_path: Path) -> None:
    (tmp_path / "logapp.py").write_text(APP, encoding="utf-8")
    (tmp_path / "logplugin.py").write_text(PLUGIN, encoding="utf-8")
    (tmp_path / "wf78.toml").write_text(CONFIG, encoding="utf-8")
    port = free_port()
    command = [sys.executable, "-m", "wf78_core.cli", "serve", "logapp:app"]
    command += ["--config", "wf78.toml", "--port", str(port), "--log-format", "json"]
    command += ["--plugin", "logplugin"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(base + "/", process)
        with httpx.Client(base_url=base, timeout=10.0) as client:
            user = {"authorization": f"Bearer {USER}"}
            admin = {"authorization": f"Bearer {ADMIN}"}
            added = client.post("/api/shop/items/mAdd", json={"pars": [ROW_VALUE]}, headers=user)
            assert added.status_code == 200, added.text
            # The koa78 session token as a query parameter, and a row value in the query.
            got = client.get(f"/api/shop/items/get?sid={USER}&pars=%5B%22{ROW_VALUE}%22%5D")
            assert got.status_code == 200, got.text
            lost = client.post("/api/shop/lost/mAdd", json={"pars": [ROW_VALUE]}, headers=user)
            assert lost.status_code == 503, lost.text
            started = client.post(
                "/_wf78/runs",
                json={"workflow": "logged", "context": {"note": ROW_VALUE}},
                headers=admin,
            )
            assert started.status_code == 202, started.text
            run_id = started.json()["run_id"]
            for _ in range(300):
                run = client.get(f"/_wf78/runs/{run_id}", headers=admin).json()
                if run["status"] not in ("pending", "running"):
                    break
                time.sleep(0.02)
            assert run["status"] == "succeeded", run
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert process.returncode == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    records: list[dict[str, Any]] = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record)
        records.append(record)
    (spoken,) = [r for r in records if r["logger"] == "wf78.test.speaker"]
    assert spoken["message"] == "task speak ran"
    assert (spoken["run_id"], spoken["task_id"], spoken["workflow"]) == (run_id, "speak", "logged")
    assert spoken["data_source"] == "main"
    assert len(spoken["trace_id"]) == 32 and len(spoken["span_id"]) == 16
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any("GET /api/shop/items/get HTTP/1.1 200" in r["message"] for r in access), access
    assert any(r["logger"] == "wf78.routes" and "lost/mAdd" in r["message"] for r in records)
    for secret in (ADMIN, USER, ROW_VALUE):
        assert secret not in err, f"{secret} logged"


# -- a run's tenant and the worker's records -----------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/0"
TOKEN = "log-worker-token-" + secrets.token_hex(8)

# An action that logs, saying which tenant the task runs as (TENANT: its fair shares).
WORKER_PLUGIN = """\
import logging

from wf78_core import hookimpl
from wf78_core.core.fairness import TENANT


def speak(ctx):
    logging.getLogger("wf78.test.speaker").warning(
        "task %s ran as %r", ctx.task.id, TENANT.get()
    )


@hookimpl
def wf78_register_actions(registry):
    registry.add("test.speak", speak)
"""


def workflows_with(row_value: str) -> list[dict[str, Any]]:
    """A run writing ``row_value`` then speaking, started by API or by the event ``go``."""
    tasks = [
        {"id": "write", "params": {"action": "cache_set", "key": "k", "value": row_value}},
        {"id": "speak", "action": "test.speak", "data_source": "mem", "depends_on": ["write"]},
    ]
    return [
        {"id": "logged", "tasks": tasks},
        {"id": "evented", "trigger": "event", "event": "go", "tasks": tasks},
    ]


def load_plugin(folder: Path) -> ModuleType:
    """The worker's plugin module, imported here too (a fresh module each test)."""
    name = f"log_worker_plugin_{uuid4().hex[:8]}"
    path = folder / f"{name}.py"
    path.write_text(WORKER_PLUGIN, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Records(logging.Handler):
    """The records of one logger, with their log fields (as a configured handler has)."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_stored_context_without_a_tenant_still_decodes() -> None:
    # Entries queued before runs had a tenant: no field, no tenant.
    assert context_of(b'{"a": 1}') == ({"a": 1}, None, "")
    assert context_of(None) == ({}, None, "")
    stored = json.dumps({"a": 1, TRACE_FIELD: "00-t-s-01", TENANT_FIELD: "acme"}).encode()
    assert context_of(stored) == ({"a": 1}, "00-t-s-01", "acme")


class Spoken:
    """A ``wf78_task_event`` observer: which runs' ``speak`` task has finished."""

    def __init__(self) -> None:
        self.runs: set[str] = set()
        self._changed = anyio.Event()

    @hookimpl
    def wf78_task_event(self, event: TaskEvent) -> None:
        if event.task == "speak" and event.state == "succeeded" and event.run_id:
            self.runs.add(event.run_id)
            self._changed.set()

    async def wait(self, run_id: str) -> None:
        with anyio.fail_after(30):
            while run_id not in self.runs:
                self._changed = anyio.Event()
                await self._changed.wait()


@pytest.mark.anyio
async def test_an_in_process_runs_tasks_log_and_wait_as_its_tenant(tmp_path: Path) -> None:
    spoken = Spoken()
    config = {"datasources": {"mem": {"type": "memory"}}, "workflows": workflows_with("v")}
    records = Records()
    speaker = logging.getLogger("wf78.test.speaker")
    speaker.addHandler(records)
    try:
        async with Engine(config, plugins=[load_plugin(tmp_path), spoken]) as engine:
            with tenant("acme"):
                run = await engine.run("logged", {"note": "n"})
                (evented,) = await engine.emit("go", {"note": "n"})
            other = await engine.run("logged")
            await spoken.wait(evented)
    finally:
        speaker.removeHandler(records)
    assert run.status == "succeeded" and other.status == "succeeded", (run, other)
    by_run = {getattr(record, "run_id", None): record for record in records.records}
    said = by_run[run.id]
    fields = ("task_id", "workflow", "data_source", "tenant")
    assert [getattr(said, name) for name in fields] == ["speak", "logged", "mem", "acme"]
    assert said.getMessage() == "task speak ran as 'acme'"
    # A run started without a tenant, and an event's run (its own tenant, ""), have none.
    for run_id in (other.id, evented):
        assert not hasattr(by_run[run_id], "tenant")
        assert by_run[run_id].getMessage() == "task speak ran as ''"
    assert TENANT.get() == ""


@pytest.mark.anyio
async def test_a_run_started_over_http_is_its_callers(tmp_path: Path) -> None:
    """``POST /_wf78/runs``: the run's tenant is the admin caller's ``fair_by`` field."""
    spoken = Spoken()
    config = {
        "engine": {"fair_by": "cid"},
        "datasources": {"mem": {"type": "memory"}},
        "workflows": workflows_with("v"),
        "auth": {"tokens": {TOKEN: {"uid": "u-ada", "cid": "acme", "roles": ["admin"]}}},
    }
    records = Records()
    speaker = logging.getLogger("wf78.test.speaker")
    speaker.addHandler(records)
    engine = Engine(config, plugins=[load_plugin(tmp_path), spoken])
    app = Wf78Middleware(PlainApp(), engine=engine)
    try:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answer = await client.post(
                    "/_wf78/runs",
                    json={"workflow": "logged", "context": {}},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert answer.status_code == 202, answer.text
                run_id = answer.json()["run_id"]
                await spoken.wait(run_id)
    finally:
        speaker.removeHandler(records)
    (said,) = [r for r in records.records if getattr(r, "run_id", None) == run_id]
    assert said.tenant == "acme"  # type: ignore[attr-defined]
    assert said.getMessage() == "task speak ran as 'acme'"


class PlainApp:
    """The app behind the middleware: answers 404 to anything."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def redis_config(namespace: str, row_value: str, *, consume: bool) -> dict[str, Any]:
    return {
        "engine": {
            "backend": "redis",
            "backend_url": REDIS_URL,
            "backend_namespace": namespace,
            "consume": consume,
            "lease_ttl": 2.0,
            "drain_timeout": 5.0,
        },
        "datasources": {"mem": {"type": "memory"}},
        "auth": {"tokens": {TOKEN: {"uid": "u-ada", "cid": "acme", "uname": "ada"}}},
        "workflows": workflows_with(row_value),
    }


@pytest.mark.anyio
async def test_the_worker_logs_json_lines_naming_the_task_and_its_tenant(
    tmp_path: Path, namespace: str
) -> None:
    plugin = load_plugin(tmp_path)
    row_value = "row-secret-" + secrets.token_hex(8)
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(redis_config(namespace, row_value, consume=True)), "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WF78_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "wf78_core.cli", "worker", "--config", str(path)]
    command += ["--plugin", plugin.__name__, "--log-format", "json", "--log-level", "debug"]
    worker = Process("worker", command, tmp_path, env)
    try:
        if not worker.ready.wait(30):  # its "worker ready" record
            raise AssertionError(f"the worker did not get ready:\n{worker.stderr}")
        config = redis_config(namespace, row_value, consume=False)
        async with Engine(config, plugins=[plugin]) as engine:
            with tenant("acme"):
                run = await engine.run("logged", {"note": row_value, "token": TOKEN})
            assert run.status == "succeeded", run
            # The tenant travels beside the context, not in it.
            assert run.context == {"note": row_value, "token": TOKEN}
            assert (await engine.fetch_run(run.id)).context == run.context
            other = await engine.run("logged", {"note": row_value})
            assert other.status == "succeeded", other
    finally:
        assert worker.stop() == 0, worker.stderr
    err = worker.stderr
    records: list[dict[str, Any]] = []
    for line in err.splitlines():
        if line.strip():
            record = json.loads(line)  # every line is one JSON object
            assert isinstance(record, dict), line
            assert {"time", "level", "logger", "message", "process"} <= set(record), record
            records.append(record)
    assert any(r["message"].startswith("worker ready") for r in records), err
    said = {r["run_id"]: r for r in records if r["logger"] == "wf78.test.speaker"}
    expected = {"task_id": "speak", "workflow": "logged", "data_source": "mem", "tenant": "acme"}
    assert {name: said[run.id].get(name) for name in expected} == expected, said
    assert said[run.id]["message"] == "task speak ran as 'acme'"
    assert "tenant" not in said[other.id] and said[other.id]["message"] == "task speak ran as ''"
    assert said[other.id]["task_id"] == "speak"
    # The stop, as a record too.
    assert any("SIGTERM: finishing the tasks it holds" in r["message"] for r in records), err
    for secret in (row_value, TOKEN):
        assert secret not in err, f"{secret} logged"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The root logger's handlers and level as they were, after a command configured them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_wf78_run_logs_json_lines(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    root_logging: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    plugin = load_plugin(tmp_path)
    row_value = "row-secret-" + secrets.token_hex(8)
    config = {"datasources": {"mem": {"type": "memory"}}, "workflows": workflows_with(row_value)}
    (tmp_path / "wf78.json").write_text(json.dumps(config), encoding="utf-8")
    argv = ["run", "logged", "--config", "wf78.json", "--plugin", plugin.__name__, "--json"]
    argv += ["--context", json.dumps({"note": row_value}), "--log-format", "json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    run_id = json.loads(out)["id"]
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    (said,) = [r for r in records if r["logger"] == "wf78.test.speaker"]
    assert (said["run_id"], said["task_id"], said["workflow"]) == (run_id, "speak", "logged")
    assert row_value not in err
    # Run again in this process: its handler replaces the first one, not joins it.
    assert main([*argv[:-2], "--log-format", "text"]) == 0
    out, err = capsys.readouterr()
    (line,) = [line for line in err.splitlines() if "wf78.test.speaker" in line]
    assert line.endswith("wf78.test.speaker WARNING task speak ran as ''"), line
