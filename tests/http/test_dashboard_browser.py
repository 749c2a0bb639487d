"""The dashboard driven in a real browser: headless Chromium under the Chrome DevTools
Protocol (a websocket; no driver package), over uvicorn serving ``Wf78Middleware``.

The page opens with the history chart already drawn from the server's samples; a run
opens with its DAG; cancel and a dead letter's retry are clicked, confirmed in the page's
dialog, and the run's state changes on the page; a workflow is started with a JSON context
and an event emitted. Screenshots land in the test's tmp dir, and in the directory
``WF78_DASHBOARD_SHOTS`` names when set (``docs/`` for the README's pictures).

Chromium is required (Debian package ``chromium``, installed by ``.ci/run``): without it
this test fails and says so, it is never skipped."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from websockets.sync.client import ClientConnection, connect

from tests.http.test_dashboard import (
    ADMIN,
    DemoActions,
    Server,
    background_traffic,
    make_config,
    wait_finished,
)
from wf78_core import Engine, TaskContext, hookimpl
from wf78_core.http.middleware import Wf78Middleware


class Flaky:
    """``demo.flaky``: fails until ``fixed`` is set (then a retry succeeds)."""

    fixed = False

    async def flaky(self, ctx: TaskContext) -> str:
        await anyio.lowlevel.checkpoint()
        if not self.fixed:
            raise RuntimeError("the upstream export is not there yet")
        return "exported"

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("demo.flaky", self.flaky)


def browser_config(path: Path) -> dict[str, Any]:
    config = make_config(path)
    config["engine"]["fair_by"] = "uid"
    config["limits"] = {"writes": {"key": "uid", "rate": 500.0, "burst": 1000}}
    config["workflows"] += [
        {
            "id": "export",
            "tasks": [
                {"id": "fetch", "params": {"action": "count", "table": "Items"}},
                {"id": "upload", "action": "demo.flaky", "depends_on": ["fetch"]},
                {"id": "announce", "action": "demo.sleep", "depends_on": ["upload"]},
            ],
        },
        {
            "id": "hourly_rollup",
            "trigger": "schedule",
            "schedule": "0 * * * *",
            "tasks": [{"id": "count", "params": {"action": "count", "table": "Items"}}],
        },
        {
            "id": "on_order",
            "trigger": "event",
            "event": "order.created",
            "tasks": [{"id": "count", "params": {"action": "count", "table": "Items"}}],
        },
    ]
    return config


class Page:
    """One tab of headless Chromium, driven through the DevTools Protocol."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1400) -> None:
        executable = shutil.which("chromium")
        if executable is None:
            pytest.fail(
                "headless Chromium is required for the dashboard test and was not found: "
                "install Debian's package with `apt-get install -y chromium` (.ci/run does)"
            )
        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._attach(profile)
        except BaseException:
            self.close()
            raise

    def _attach(self, profile: Path) -> None:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail("headless Chromium did not open its DevTools port within 30s")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        (target,) = [t for t in targets if t["type"] == "page"]
        self.stack = ExitStack()
        self.socket: ClientConnection = self.stack.enter_context(
            connect(target["webSocketDebuggerUrl"], max_size=None)
        )
        self.next_id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, what: str, within: float = 15.0) -> Any:
        deadline = time.monotonic() + within
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while True:
            value = self.evaluate(guarded)  # null while the page is not there yet
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.evaluate(
                    "(document.getElementById('connection') || {}).textContent + ' / ' +"
                    " (document.getElementById('run-view-meta') || {}).textContent + ' / ' +"
                    " (document.getElementById('dag') || {}).outerHTML"
                )
                pytest.fail(
                    f"the page did not show {what} within {within}s: {expression} ({state})"
                )
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        found = self.evaluate(
            f"(() => {{ const n = document.querySelector({json.dumps(selector)});"
            " if (!n) return false; n.click(); return true; })()"
        )
        assert found, f"nothing to click at {selector}"

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png")  # the window, 1280 x 1400
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        stack = getattr(self, "stack", None)
        if stack is not None:
            stack.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    opened = Page(tmp_path / "profile")
    try:
        yield opened
    finally:
        opened.close()


def shots(tmp_path: Path) -> list[Path]:
    """Where screenshots go: the tmp dir, and ``WF78_DASHBOARD_SHOTS`` when set."""
    places = [tmp_path]
    if os.environ.get("WF78_DASHBOARD_SHOTS"):
        places.append(Path(os.environ["WF78_DASHBOARD_SHOTS"]))
    return places


def save(page: Page, tmp_path: Path, name: str) -> None:
    for place in shots(tmp_path):
        page.screenshot(place / name)
    picture = tmp_path / name
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size > 20_000  # a rendered page, not a blank one


def run_state(page: Page) -> Any:
    return page.evaluate("document.getElementById('run-view-status').dataset.status || ''")


def test_dashboard_history_run_dag_and_actions_in_a_browser(page: Page, tmp_path: Path) -> None:
    flaky = Flaky()
    engine = Engine(browser_config(tmp_path / "browser.db"), plugins=[DemoActions(), flaky])

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the app")

    app = Wf78Middleware(Starlette(routes=[Route("/", home)]), engine=engine)
    with Server(app) as base:
        headers = {"authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=10.0) as client:
            for number in range(20):
                client.post("/api/demo/Items/mAdd", json={"pars": [f"i{number}", number]})
            pipe = {"values": {"name": "pipe"}}
            pipelines = [
                client.post("/_wf78/runs", json={"workflow": "pipeline", "context": pipe}).json()[
                    "run_id"
                ]
                for _ in range(3)
            ]
            for run_id in pipelines:
                finished = wait_finished(client, run_id)
                assert finished["status"] == "succeeded", json.dumps(finished)
            export = client.post("/_wf78/runs", json={"workflow": "export"}).json()["run_id"]
            assert wait_finished(client, export)["status"] == "failed"
            # Seconds of samples before the page opens (longer for the README's pictures).
            with background_traffic(base):
                time.sleep(float(os.environ.get("WF78_DASHBOARD_WARMUP", "3.2")))
            long_run = client.post("/_wf78/runs", json={"workflow": "long_haul"}).json()["run_id"]
            time.sleep(1.2)  # and a sample with it running
            held = client.get("/_wf78/history").json()["samples"]
        assert len(held) >= 3

        # -- open: the history is drawn at once, from before the page existed -------------
        opened_at = time.time()
        page.call("Page.navigate", url=f"{base}/_wf78/#token={ADMIN}")
        page.wait_for(
            "document.getElementById('connection').dataset.state === 'live'", "the first poll"
        )
        drawn = page.evaluate("Number(document.getElementById('history-scope').dataset.samples)")
        assert drawn >= len(held)
        first = page.evaluate(
            "document.querySelector('#chart-throughput [data-series=\"db\"]').dataset.points"
        )
        assert int(first) >= 3  # before the page's first second was over
        assert time.time() - opened_at < 15
        peak = page.evaluate("Number(document.getElementById('chart-throughput').dataset.peak)")
        assert peak > 0  # the adds and runs are in it: the chart is not flat
        assert page.evaluate("!!document.querySelector('#chart-latency [data-series=\"db:p99\"]')")
        assert page.evaluate("!!document.querySelector('#chart-work [data-series=\"queued\"]')")
        # ... and it keeps appending.
        page.wait_for(
            f"Number(document.getElementById('history-scope').dataset.samples) > {drawn}",
            "a new sample",
        )
        # The workflows with their triggers, and the scheduled one's next fire time.
        rollup = "#triggers tr[data-trigger-of='hourly_rollup']"
        assert page.evaluate(f'document.querySelector("{rollup} .cadence").textContent') == (
            "0 * * * *"
        )
        assert ":00:00" in page.evaluate(
            f'document.querySelector("{rollup} .next-fire").textContent'
        )
        # The limits and fair shares the engine's stats carry.
        assert page.evaluate("document.getElementById('limits-panel').hidden") is False
        assert page.evaluate("document.getElementById('fair-by').textContent") == (
            "fair shares by uid"
        )
        row = "#limits tr[data-limit='writes']"
        assert page.evaluate(f'document.querySelector("{row} .limit-rate").textContent') == "500"
        allowed = page.evaluate(f'document.querySelector("{row} .limit-allowed").textContent')
        assert int(allowed) >= 20  # the adds above went through it
        save(page, tmp_path, "dashboard.png")

        # -- a run opens with its DAG; cancel it from the page ------------------------------
        # Found through the workflow filter (the background traffic made many runs).
        page.evaluate(
            "(() => { const s = document.getElementById('filter-workflow'); s.value = 'long_haul';"
            " s.dispatchEvent(new Event('change', { bubbles: true })); })()"
        )
        page.wait_for(
            "[...document.querySelectorAll('#runs .run')].map((r) => r.dataset.workflow).join()"
            " === 'long_haul'",
            "only the long_haul run",
        )
        page.click(f"#runs .run[data-run-id='{long_run}'] a.open-run")
        page.wait_for(
            f"document.getElementById('run-view-id').textContent === '{long_run}'", "the run"
        )
        page.wait_for("!!document.querySelector('#dag g.node[data-task=\"wait\"]')", "the DAG")
        assert run_state(page) == "running"
        page.click("#run-view-cancel")
        page.wait_for("document.getElementById('confirm').open", "the confirmation dialog")
        page.click("#confirm-ok")
        page.wait_for(
            "document.getElementById('run-view-status').dataset.status === 'cancelled'",
            "the run cancelled",
        )
        assert page.evaluate("document.querySelector('#dag g.node').dataset.state") == "cancelled"
        assert "is cancelled" in page.evaluate("document.getElementById('notice').textContent")

        # -- the failed run: its DAG, its dead letter retried from the page -----------------
        page.evaluate(f"location.hash = 'run=' + {json.dumps(export)}")
        page.wait_for(
            "!!document.querySelector('#run-tasks tr[data-task=\"upload\"] button.retry')",
            "the dead letter's retry",
        )
        states = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#dag g.node')]"
            ".map((n) => [n.dataset.task, n.dataset.state]))"
        )
        assert states == {"fetch": "succeeded", "upload": "failed", "announce": "skipped"}
        assert page.evaluate("document.querySelectorAll('#dag path.edge').length") == 2
        error = page.evaluate(
            "document.querySelector('#run-tasks tr[data-task=\"upload\"] .error').textContent"
        )
        assert "the upstream export is not there yet" in error
        save(page, tmp_path, "dashboard-run.png")
        flaky.fixed = True
        page.click("#run-tasks tr[data-task='upload'] button.retry")
        page.wait_for("document.getElementById('confirm').open", "the confirmation dialog")
        page.click("#confirm-ok")
        page.wait_for(
            "document.getElementById('run-view-status').dataset.status === 'succeeded'",
            "the retried run succeed",
            within=20,
        )
        states = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#dag g.node')]"
            ".map((n) => [n.dataset.task, n.dataset.state]))"
        )
        assert states == {"fetch": "succeeded", "upload": "succeeded", "announce": "succeeded"}

        # -- start a workflow with a JSON context; a bad one is refused in the dialog -------
        page.click("#triggers button.start[data-workflow='pipeline']")
        page.wait_for("document.getElementById('confirm').open", "the start dialog")
        page.evaluate("document.getElementById('confirm-input').value = '[1, 2'")
        page.click("#confirm-ok")
        assert page.evaluate("document.getElementById('confirm').open")
        assert "not JSON" in page.evaluate("document.getElementById('confirm-problem').textContent")
        page.evaluate(
            "document.getElementById('confirm-input').value = "
            '\'{"values": {"name": "from the page"}}\''
        )
        page.click("#confirm-ok")
        page.wait_for(
            "document.getElementById('notice').textContent.startsWith('started run ')",
            "the started run",
        )
        started = page.evaluate("document.getElementById('run-view-id').textContent")
        assert started not in (export, long_run, *pipelines)
        page.wait_for(
            "document.getElementById('run-view-status').dataset.status === 'succeeded'",
            "the started run succeed",
        )

        # -- emit an event ------------------------------------------------------------------
        page.evaluate("document.getElementById('emit-event').value = 'order.created'")
        page.click("#emit button[type=submit]")
        page.wait_for("document.getElementById('confirm').open", "the emit dialog")
        page.click("#confirm-ok")
        page.wait_for(
            "document.getElementById('notice').textContent.startsWith('started 1 run(s)')",
            "the event's run",
        )

        # -- filter the runs list -----------------------------------------------------------
        page.evaluate(
            "(() => { document.getElementById('filter-workflow').value = '';"
            " const s = document.getElementById('filter-status'); s.value = 'cancelled';"
            " s.dispatchEvent(new Event('change', { bubbles: true })); })()"
        )
        page.wait_for(
            "[...document.querySelectorAll('#runs .run')].map((r) => r.dataset.runId).join()"
            f" === '{long_run}'",
            "only the cancelled run",
        )
