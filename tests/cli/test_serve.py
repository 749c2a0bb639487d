"""``wf78 serve`` once for real: a uvicorn process over TCP, stopped with SIGTERM."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from wf78_core import Wf78Middleware
from wf78_core.cli import main, serve

ADMIN = "serve-admin-token"
USER = "serve-user-token"

APP = """\
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from wf78_core import current


async def home(request):
    return PlainTextResponse("home of servedapp")


async def me(request):
    identity = current().identity
    return JSONResponse({"hello": identity.uname if identity else None})


app = Starlette(routes=[Route("/", home), Route("/me", me)])


def make_app():
    return app
"""

CONFIG = f"""\
[datasources.main]
type = "sqlite"
url = "sqlite:///data/served.db"

[tables.items]
columns = {{ name = "text", qty = "int" }}
owner = "cid"
route = "api/shop"

[auth.tokens.{ADMIN}]
uid = "u-root"
cid = "acme"
uname = "root"
roles = ["admin"]

[auth.tokens.{USER}]
uid = "u-ada"
cid = "acme"
uname = "ada"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_answers(url: str, process: subprocess.Popen[str], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"wf78 serve exited with {process.returncode}:\n{out}\n{err}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"wf78 serve did not answer on {url} within {within}s")


@pytest.mark.parametrize("mode", ["app", "factory", "workers"])
def test_serve_over_tcp(tmp_path: Path, mode: str) -> None:
    (tmp_path / "servedapp.py").write_text(APP, encoding="utf-8")
    (tmp_path / "wf78.toml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "data").mkdir()
    port = free_port()
    script = Path(sys.executable).with_name("wf78")
    command = [str(script), "serve", "servedapp:make_app" if mode == "factory" else "servedapp:app"]
    command += ["--config", "wf78.toml", "--port", str(port), "--log-level", "warning"]
    if mode == "factory":
        command.append("--factory")
    elif mode == "workers":  # each worker builds its app through wf78_core.serve:app_factory
        command += ["--workers", "2"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(base + "/", process)
        with httpx.Client(base_url=base, timeout=10.0) as client:
            assert client.get("/").text == "home of servedapp"
            user = {"authorization": f"Bearer {USER}"}
            assert client.get("/me", headers=user).json() == {"hello": "ada"}
            added = client.post("/api/shop/items/mAdd", json={"pars": ["pen", 3]}, headers=user)
            assert added.status_code == 200 and added.json()["res"] == 0, added.text
            got = client.post("/api/shop/items/get", json={}, headers=user).json()
            assert [(row["name"], row["qty"]) for row in got["back"]] == [("pen", 3)]
            status = client.get("/_wf78/status", headers={"authorization": f"Bearer {ADMIN}"})
            assert status.status_code == 200, status.text
            assert status.json()["submitted"] >= 2
            assert client.get("/_wf78/status", headers=user).status_code == 403
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    assert f"on http://127.0.0.1:{port}" in out
    if mode != "workers":
        assert "wf78 serve: stopped" in out
    # The engine closed: SQLite checkpointed the WAL into the database and removed it.
    database = tmp_path / "data" / "served.db"
    assert not database.with_name("served.db-wal").exists(), err
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT name, qty, cid, upby FROM items").fetchall() == [
            ("pen", 3, "acme", "ada")
        ]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_78:app", "cannot import module 'no_such_module_78'"),
        ("examples.app", "is not MODULE:APP"),
        ("examples.app:nothing_here", "has no attribute 'nothing_here'"),
        ("examples.app:DEFAULT_DB", "not an ASGI app"),
    ],
)
def test_serve_bad_target(
    target: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # serve puts the app dir first
    assert main(["serve", target]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_serve_refuses_config_for_a_wrapped_app(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "wf78.toml").write_text(CONFIG, encoding="utf-8")
    assert main(["serve", "examples.app:app", "--config", "wf78.toml"]) == 2
    assert "already wrapped" in capsys.readouterr().err


def test_serve_reports_a_bad_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "wf78.toml").write_text('[tables.items]\ncolumns = ["name"]\nroute = "v1"\n')
    assert main(["serve", "examples.app:raw_app", "--config", "wf78.toml"]) == 1
    err = capsys.readouterr().err
    assert "tables.items" in err and "apisys/apimicro" in err


def test_app_factory_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "wf78.toml").write_text(CONFIG, encoding="utf-8")
    monkeypatch.setenv(serve.TARGET_ENV, "examples.app:raw_app")
    monkeypatch.setenv(serve.CONFIG_ENV, str(tmp_path / "wf78.toml"))
    monkeypatch.setenv(serve.FACTORY_ENV, "")
    app = serve.app_factory()
    assert isinstance(app, Wf78Middleware)
    assert set(app.engine.config.tables) == {"items"}
    monkeypatch.delenv(serve.TARGET_ENV)
    with pytest.raises(serve.TargetError, match="WF78_SERVE_TARGET is not set"):
        serve.app_factory()
