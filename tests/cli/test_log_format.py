"""``wf78 serve --log-format json``: one JSON object per line on stderr, wf78's records with
the run, task, workflow (and trace ids when tracing is on); no token or row value in any
line, uvicorn's access lines included (their query string is left out)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.cli.test_serve import free_port, wait_until_answers
from wf78_core.cli.parser import build_parser
from wf78_core.cli.serve import logging_options

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
