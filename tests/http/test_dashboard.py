"""The dashboard in a real browser: uvicorn on a loopback port serving ``Wf78Middleware``
over a Starlette app, real traffic, then headless Chromium loads ``/_wf78/#token=...``,
runs the page's scripts for a few (virtual) seconds, and the dumped DOM must show the
numbers the traffic produced. A screenshot lands in the test's tmp dir. The token, in the
URL's fragment, never reaches the server: uvicorn's access log never holds it.

Chromium is required (Debian package ``chromium``, installed by ``.ci/run``): without it
this test fails and says so, it is never skipped."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from wf78_core import Engine, TaskContext, hookimpl
from wf78_core.http.middleware import Wf78Middleware

ADMIN = "dash-admin-token"
USER = "dash-user-token"
PIPELINES = 4  # runs of "pipeline": each one count + one add on the source
ADDS = 3  # koa78 mAdd calls: one engine.submit each
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]


class DemoActions:
    """``demo.sleep``: a task that takes ``params.seconds``, so the timeline has width."""

    @staticmethod
    async def sleep(ctx: TaskContext) -> float:
        seconds = float(ctx.params.get("seconds", 0.01))
        await anyio.sleep(seconds)
        return seconds

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("demo.sleep", self.sleep)


def make_config(path: Path) -> dict[str, Any]:
    return {
        "engine": {"drain_timeout": 1.0},
        "datasources": {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}},
        "tables": {
            "Items": {
                "columns": {"name": "text", "qty": "int"},
                "route": "api/demo",
                "data_source": "db",
            }
        },
        "workflows": [
            {
                "id": "pipeline",
                "name": "Extract, transform twice, load",
                "priority": 1,
                "max_concurrent": 4,
                "tasks": [
                    {"id": "extract", "params": {"action": "count", "table": "Items"}},
                    {
                        "id": "transform_a",
                        "action": "demo.sleep",
                        "depends_on": ["extract"],
                        "params": {"seconds": 0.03},
                    },
                    {
                        "id": "transform_b",
                        "action": "demo.sleep",
                        "depends_on": ["extract"],
                        "params": {"seconds": 0.08},
                    },
                    {
                        "id": "load",
                        "depends_on": ["transform_a", "transform_b"],
                        "params": {"action": "add", "table": "Items"},
                    },
                ],
            },
            {
                "id": "audit",
                "priority": 2,
                "tasks": [
                    # A column the table does not have: the task fails, its dependant is skipped.
                    {
                        "id": "check",
                        "params": {"action": "get", "table": "Items", "where": {"nope": 1}},
                    },
                    {"id": "notify", "action": "demo.sleep", "depends_on": ["check"]},
                ],
            },
            {
                "id": "long_haul",
                "priority": 3,
                "max_concurrent": 3,
                "tasks": [{"id": "wait", "action": "demo.sleep", "params": {"seconds": 60}}],
            },
        ],
        "auth": {
            "tokens": {
                ADMIN: {"uid": "u-root", "uname": "root", "roles": ["admin"]},
                USER: {"uid": "u-ada", "uname": "ada"},
            }
        },
    }


async def home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("the app")


class AccessLog(logging.Handler):
    """What uvicorn's access log writes, line by line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Server:
    """uvicorn on a free loopback port, in a thread of its own; with ``access_log``, its
    access log (on, as in production) goes there."""

    def __init__(self, app: Any, access_log: AccessLog | None = None) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        if access_log is None:
            config = uvicorn.Config(app, log_level="warning", lifespan="on")
        else:
            config = uvicorn.Config(app, log_level="info", lifespan="on", log_config=None)
        self.access_log = access_log
        if access_log is not None:
            logging.getLogger("uvicorn.access").addHandler(access_log)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start within 20s")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.socket.close()
        if self.access_log is not None:
            logging.getLogger("uvicorn.access").removeHandler(self.access_log)
        assert not self.thread.is_alive(), "uvicorn did not stop within 20s"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    starlette_app = Starlette(routes=[Route("/", home)])
    engine = Engine(make_config(tmp_path / "dashboard.db"), plugins=[DemoActions()])
    with Server(Wf78Middleware(starlette_app, engine=engine)) as base:
        yield base


def wait_finished(client: httpx.Client, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        run: dict[str, Any] = client.get(f"/_wf78/runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        time.sleep(0.02)
    pytest.fail(f"run {run_id} did not finish within 10s")


def produce_traffic(base: str) -> dict[str, Any]:
    """Runs, a failure, koa78 calls and two long runs still going; what the page must show."""
    headers = {"authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10.0) as client:
        # What the start did (its table maintenance submits operations too).
        before = client.get("/_wf78/status").json()
        pipelines = []
        for number in range(PIPELINES):
            started = client.post(
                "/_wf78/runs",
                json={"workflow": "pipeline", "context": {"values": {"name": f"p{number}"}}},
            )
            assert started.status_code == 202, started.text
            pipelines.append(started.json()["run_id"])
        for run_id in pipelines:
            assert wait_finished(client, run_id)["status"] == "succeeded"
        audit = client.post("/_wf78/runs", json={"workflow": "audit"}).json()["run_id"]
        assert wait_finished(client, audit)["status"] == "failed"
        for number in range(ADDS):
            added = client.post("/api/demo/Items/mAdd", json={"pars": [f"item{number}", number]})
            assert added.status_code == 200 and added.json()["res"] == 0, added.text
        long_runs = [
            client.post("/_wf78/runs", json={"workflow": "long_haul"}).json()["run_id"]
            for _ in range(2)
        ]
        deadline = time.monotonic() + 10
        while client.get("/_wf78/status").json()["running"] < 2:
            if time.monotonic() > deadline:
                pytest.fail("the long runs did not start within 10s")
            time.sleep(0.02)
        status = client.get("/_wf78/status").json()
    (source,) = status["sources"]
    # What the test produced: one count and one add per pipeline, one add per mAdd.
    assert source["ops"] == before["sources"][0]["ops"] + 2 * PIPELINES + ADDS
    return {
        "pipelines": pipelines,
        "audit": audit,
        "long": long_runs,
        "status": status,
        "before": before,
    }


@contextmanager
def background_traffic(base: str) -> Iterator[None]:
    """koa78 writes and now and then a failing run, until the block ends."""
    stop = threading.Event()

    def drive() -> None:
        headers = {"authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=10.0) as client:
            number = 0
            while not stop.is_set():
                try:
                    client.post("/api/demo/Items/mAdd", json={"pars": [f"bg{number}", number]})
                    if number % 25 == 0:
                        client.post("/_wf78/runs", json={"workflow": "audit"})
                except httpx.TimeoutException:
                    # Only decoration for the charts: a request slowed past the client's
                    # timeout on a crowded machine must not fail the test from this thread.
                    pass
                number += 1
                stop.wait(0.005)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def chromium(*arguments: str, profile: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "headless Chromium is required for the dashboard test and was not found: "
            "install Debian's package with `apt-get install -y chromium` (.ci/run does)"
        )
    command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("headless Chromium did not finish within 90s")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# -- a small DOM for the dumped page (Chromium closes every non-void element) ------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Node:
    def __init__(self, tag: str, attributes: dict[str, str], parent: Node | None) -> None:
        self.tag = tag
        self.attributes = attributes
        self.parent = parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attributes.get("class", "").split())

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def walk(self) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            node
            for node in self.walk()
            if (tag is None or node.tag == tag)
            and (cls is None or cls in node.classes)
            and all(node.attributes.get(k) == v for k, v in wanted.items())
        ]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, cls, **attrs)
        assert len(found) == 1, f"expected one {tag or ''}.{cls or ''}{attrs}, found {len(found)}"
        return found[0]


class DomBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Node:
    builder = DomBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# -- the test ------------------------------------------------------------------------------


def test_dashboard_shows_live_engine_state(served: str, tmp_path: Path) -> None:
    produced = produce_traffic(served)
    url = f"{served}/_wf78/#token={ADMIN}"

    dump = chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    dom = parse(dump.stdout)

    assert dom.one(id="connection").attributes["data-state"] == "live", dump.stdout[-2000:]

    # The engine tiles.
    def stat(name: str) -> str:
        return dom.one(cls="stat", data_stat=name).one(cls="value").text

    before = produced["before"]
    assert stat("submitted") == str(before["submitted"] + ADDS)
    assert stat("completed") == str(before["completed"] + ADDS)
    assert stat("runs_active") == "2"
    assert stat("runs_finished") == str(PIPELINES + 1)

    # Per-source numbers, exactly what the traffic produced.
    source = dom.one("tr", data_source="db")
    ops = before["sources"][0]["ops"] + 2 * PIPELINES + ADDS
    assert source.one(cls="ops").text == str(ops)
    assert source.one(cls="errors").text == str(produced["status"]["sources"][0]["errors"])
    assert source.one(cls="type").text == "sqlite"
    float(source.one(cls="rate").text)  # ops/s from two successive polls at least
    assert source.one(cls="p50").text.endswith(("µs", "ms"))

    # Running vs max_concurrent per workflow, as bars.
    rows = dom.one("table", id="workflows").one("tbody").find_all("tr")
    shown = [row.attributes["data-workflow"] for row in rows]
    # The configured ones, in order (the engine may add its own wf78.* workflows).
    assert [name for name in shown if not name.startswith("wf78.")] == [
        "pipeline",
        "audit",
        "long_haul",
    ]
    long_haul = dom.one("tr", data_workflow="long_haul")
    assert long_haul.one(cls="running").text == "2"
    assert long_haul.one(cls="max").text == "3"
    assert long_haul.one(cls="fill") is not None
    assert dom.one("tr", data_workflow="pipeline").one(cls="max").text == "4"

    # Queue depth per priority and the agents.
    rows = dom.one("table", id="queues").one("tbody").find_all("tr")
    assert [row.attributes["data-priority"] for row in rows] == ["1", "2", "3"]
    assert dom.one("tr", data_priority="1").one(cls="depth").text == "0"
    agent = dom.one("tr", data_agent="agent-db")
    assert agent.one(cls="completed").text == str(ops)

    # Live charts: a series per source on each chart.
    assert dom.one(id="chart-latency").find_all(data_series="db:p99")
    assert dom.one(id="chart-throughput").find_all(data_series="db")
    assert dom.one(id="chart-errors").find_all(data_series="db")

    # The timeline: every run, its tasks coloured by state.
    runs = dom.one(id="runs")
    first = runs.one(cls="run", data_run_id=produced["pipelines"][0])
    assert first.attributes["data-status"] == "succeeded"
    assert first.one(cls="workflow").text == "pipeline"
    for task in ("extract", "transform_a", "transform_b", "load"):
        row = first.one(cls="task", data_task=task)
        assert row.attributes["data-state"] == "succeeded"
        assert row.one(cls="span").classes >= {"state-succeeded"}
    audit = runs.one(cls="run", data_run_id=produced["audit"])
    assert audit.attributes["data-status"] == "failed"
    assert audit.one(cls="task", data_task="check").attributes["data-state"] == "failed"
    assert audit.one(cls="task", data_task="notify").attributes["data-state"] == "skipped"
    for run_id in produced["long"]:
        assert runs.one(cls="run", data_run_id=run_id).attributes["data-status"] == "running"

    # The audit's failed task is a dead letter, with its error.
    letters = dom.one(id="dead-letters").text
    assert "audit / check" in letters and "unknown column 'nope'" in letters
    assert dom.one(id="dead-letter-count").text.strip() == "1"

    screenshot = tmp_path / "dashboard.png"
    with background_traffic(served):  # so the charts move in the picture
        chromium(
            f"--screenshot={screenshot}",
            "--window-size=1280,900",
            url,
            profile=tmp_path / "profile-shot",
        )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_dashboard_without_a_token_asks_for_one(served: str, tmp_path: Path) -> None:
    dump = chromium("--dump-dom", f"{served}/_wf78/", profile=tmp_path / "profile")
    dom = parse(dump.stdout)
    form = dom.one("form", id="login")
    assert "hidden" not in form.attributes  # the script shows it
    assert form.one("input").attributes["name"] == "token"
    assert form.attributes["method"] == "post"  # never a GET: the token stays out of URLs
    connection = dom.one(id="connection")
    assert connection.attributes["data-state"] == "error"
    assert connection.text == "sign in needed"


def test_the_token_never_reaches_the_access_log(tmp_path: Path) -> None:
    access_log = AccessLog()
    engine = Engine(make_config(tmp_path / "dashboard.db"), plugins=[DemoActions()])
    app = Wf78Middleware(Starlette(routes=[Route("/", home)]), engine=engine)
    with Server(app, access_log=access_log) as base:
        dump = chromium("--dump-dom", f"{base}/_wf78/#token={ADMIN}", profile=tmp_path / "p")
        dom = parse(dump.stdout)
        # Signed in from the fragment: the page polled the API with the bearer header.
        assert dom.one(id="connection").attributes["data-state"] == "live", dump.stdout[-2000:]
        assert dom.one(id="login").attributes.get("hidden") is not None
    logged = "\n".join(access_log.lines)
    # The log is on and saw the page, its files and the polls, never the token.
    for request in ("GET /_wf78/ ", "GET /_wf78/static/dashboard.js", "GET /_wf78/status"):
        assert request in logged, logged
    assert ADMIN not in logged and "token" not in logged, logged
