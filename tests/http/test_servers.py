"""``Wf78Middleware`` under real ASGI servers, each in a process of its own over TCP: uvicorn,
hypercorn's asyncio worker and granian (``--interface asgi --loop asyncio``) serving
``tests/fixtures/served_wrapped.py:app``, and ``wf78 serve served_app:inner --config ...``
(also with ``--workers 2``). README, "Servers and backends", has the table these fill.

For each server: a data route (insert, then get), a pass-through route of the inner app
with ``current()`` bound, a streaming response whose chunks arrive one by one, a websocket
echoed through the middleware, the lifespan's start (``/_wf78/status`` answers; the engine
opened before the inner app's start-up) and a failed start (the process exits naming
wf78's reason), and SIGTERM: 20 requests in flight are answered and their rows are in the
SQLite file afterwards, an open websocket is closed, the inner app shuts down, then the
engine closes, and the process exits with the server's status. Also: servers without the
lifespan protocol (wf78's routes answer 503), ``hypercorn -k trio`` (refused at start).

No fixed sleeps: every wait is for an event or polls towards a generous deadline (a
loaded 2-core machine), and every process is killed, its whole process group, in a
``finally``.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

from wf78_core.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
ADMIN = "servers-admin-token"
USER = "servers-user-token"
AS_USER = {"authorization": f"Bearer {USER}"}
AS_ADMIN = {"authorization": f"Bearer {ADMIN}"}
# Generous: a loaded 2-core machine starts a server in seconds, not minutes.
START_WITHIN = 60.0
STOP_WITHIN = 60.0
REQUEST_TIMEOUT = 30.0
IN_FLIGHT = 20

CONFIG = f"""\
[engine]
journal = "memory"

[datasources.main]
type = "sqlite"
url = "sqlite:///@DATABASE@"

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

SERVERS = ["uvicorn", "hypercorn", "granian", "wf78 serve"]
# The exit status after SIGTERM and a complete graceful shutdown: uvicorn's CLI raises the
# signal again once it has shut down (so the status says a signal ended it), the others exit 0.
SIGTERM_STATUS = {
    "uvicorn": -signal.SIGTERM,
    "hypercorn": 0,
    "granian": 0,
    "wf78 serve": 0,
    "wf78 serve --workers 2": 0,
}
# How each server ends a websocket still open when SIGTERM comes (the versions locked):
# uvicorn sends 1012 (service restart) at once; hypercorn waits its --graceful-timeout
# (3 s), then cancels the connection's task and sends 1011; granian drops the connection
# without a close frame.
WEBSOCKET_CLOSE_AT_SIGTERM: dict[str, int | None] = {
    "uvicorn": 1012,
    "hypercorn": 1011,
    "granian": None,
    "wf78 serve": 1012,
    "wf78 serve --workers 2": 1012,
}


def http_client(base: str, timeout: float = REQUEST_TIMEOUT, **options: Any) -> httpx.Client:
    """A client of the server on the loopback: plain HTTP, so no TLS context (building
    httpx's default one costs a tenth of a second) and no proxy from the environment."""
    return httpx.Client(base_url=base, timeout=timeout, verify=False, trust_env=False, **options)


def websocket_to(served: Served) -> ClientConnection:
    """A websocket to the inner app's ``/ws`` as the user (no proxy from the environment)."""
    return connect(
        f"ws://127.0.0.1:{served.port}/ws",
        additional_headers=AS_USER,
        open_timeout=REQUEST_TIMEOUT,
        close_timeout=10,
        proxy=None,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(server: str, port: int, folder: Path) -> list[str]:
    """The command line of ``server`` (or a variant of one) on ``port``."""
    python = sys.executable
    app = "served_wrapped:app"
    granian = ["-m", "granian", "--loop", "asyncio", "--port", str(port)]
    commands = {
        "uvicorn": ["-m", "uvicorn", app, "--port", str(port)],
        "uvicorn --lifespan off": ["-m", "uvicorn", app, "--port", str(port), "--lifespan", "off"],
        "hypercorn": ["-m", "hypercorn", "-k", "asyncio", "-b", f"127.0.0.1:{port}", app],
        "hypercorn -k trio": ["-m", "hypercorn", "-k", "trio", "-b", f"127.0.0.1:{port}", app],
        "granian": [*granian, "--interface", "asgi", app],
        "granian --interface asginl": [*granian, "--interface", "asginl", app],  # no lifespan
    }
    if server.startswith("wf78 serve"):
        wf78 = str(Path(python).with_name("wf78"))
        config = str(folder / "wf78.toml")
        command = [wf78, "serve", "served_app:inner", "--config", config, "--port", str(port)]
        return command + server.split()[2:]  # "wf78 serve --workers 2": each its own engine
    return [python, *commands[server]]


class Served:
    """One server process serving the fixture app on a free port of the loopback."""

    def __init__(self, server: str, folder: Path) -> None:
        self.server = server
        self.folder = folder
        self.database = folder / "served.db"
        (folder / "wf78.toml").write_text(
            CONFIG.replace("@DATABASE@", str(self.database)), encoding="utf-8"
        )
        # `wf78 serve` (one process) is given port 0 and says which port it bound.
        self.port = 0 if server == "wf78 serve" else free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, ready: str | None = "/_wf78/status") -> None:
        """Start the server and wait until ``ready`` answers 200 (None: do not wait)."""
        environment = dict(os.environ)
        environment["SERVED_APP_DIR"] = str(self.folder)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(FIXTURES), *filter(None, [environment.get("PYTHONPATH")])]
        )
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                server_command(self.server, self.port, self.folder),
                cwd=self.folder,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: workers are killed with it
            )
        if ready is None:
            return
        if self.port == 0:
            self.port = self.announced_port()
            self.base = f"http://127.0.0.1:{self.port}"
        self.wait_until_ready(ready)

    def announced_port(self) -> int:
        """The port ``wf78 serve --port 0`` says it serves on."""
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline:
            found = re.search(r" on http://127\.0\.0\.1:(\d+) ", self.tail(100))
            if found:
                return int(found.group(1))
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"{self.server} exited with {self.process.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        pytest.fail(f"{self.server} announced no port within {START_WITHIN}s:\n{self.tail()}")

    def wait_until_ready(self, path: str) -> None:
        """Until ``path`` answers 200 (``/_wf78/status``: the lifespan started the engine)."""
        deadline = time.monotonic() + START_WITHIN
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"{self.server} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with http_client(self.base, timeout=5.0) as http:
                    answer = http.get(path, headers=AS_ADMIN)
            except httpx.TransportError as error:
                last = repr(error)
            else:
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text}"
            time.sleep(0.05)
        pytest.fail(f"{self.server} not ready within {START_WITHIN}s ({last}):\n{self.tail()}")

    def idle_connection(self) -> socket.socket:
        """A keep-alive connection that has had its answer and now sits idle: every server
        here closes such connections as soon as it begins to shut down."""
        connection = socket.create_connection(("127.0.0.1", self.port), REQUEST_TIMEOUT)
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"home of served_app"):
            chunk = connection.recv(65536)
            assert chunk, f"closed before the answer: {answer!r}"
            answer += chunk
        return connection

    def terminate(self) -> int:
        """SIGTERM to the server's own process (as an orchestrator sends it) and its exit
        status once it stopped."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        """The exit status, once the process exited (failing after ``STOP_WITHIN``)."""
        assert self.process is not None
        try:
            return self.process.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.server} did not stop within {STOP_WITHIN}s:\n{self.tail()}")

    def kill(self) -> None:
        """Whatever of the process group is left, killed and reaped."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone: every process in it exited
        self.process.wait()

    def waiting(self) -> list[str]:
        """The slow requests waiting in the inner app, in any worker process."""
        folder = self.folder / "inflight"
        return sorted(path.name for path in folder.iterdir()) if folder.exists() else []

    def events(self) -> list[str]:
        path = self.folder / "events.log"
        return path.read_text(encoding="utf-8").split() if path.exists() else []

    def rows(self) -> list[tuple[str, str, str, str]]:
        with sqlite3.connect(self.database) as connection:
            return connection.execute("SELECT id, name, cid, upby FROM items").fetchall()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module", params=SERVERS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A server process shared by the feature tests of one server."""
    name = str(request.param)
    process = Served(name, tmp_path_factory.mktemp(name.replace(" ", "-")))
    try:
        process.start()
        yield process
    finally:
        try:
            if process.process is not None and process.process.poll() is None:
                process.terminate()
        finally:
            process.kill()


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with http_client(served.base) as http:
        yield http


def test_data_route_insert_and_get(client: httpx.Client) -> None:
    name = f"pen-{uuid.uuid4().hex[:8]}"
    added = client.post("/api/shop/items/mAdd", json={"pars": [name, 3]}, headers=AS_USER)
    assert added.status_code == 200 and added.json()["res"] == 0, added.text
    new_id = added.json()["back"]
    got = client.post("/api/shop/items/get", json={"pars": [name]}, headers=AS_USER)
    assert got.status_code == 200, got.text
    assert [(row["id"], row["name"], row["qty"]) for row in got.json()["back"]] == [
        (new_id, name, 3)
    ]
    refused = client.post("/api/shop/items/mAdd", json={"pars": ["x", 1]})
    assert refused.status_code == 401 and refused.json()["res"] < 0


def test_pass_through(client: httpx.Client) -> None:
    home = client.get("/")
    assert home.status_code == 200 and home.text == "home of served_app"
    assert client.get("/me", headers=AS_USER).json() == {"hello": "ada"}
    assert client.get("/me").json() == {"hello": None}
    assert client.get("/no/such/route").status_code == 404  # the inner app's own 404


def test_streaming_arrives_in_chunks(served: Served) -> None:
    """Each line is written only after the client acknowledged the one before: a server (or
    middleware) that held the response back until it ended would never send the first."""
    stream_id = uuid.uuid4().hex
    chunks = 4
    with (
        http_client(served.base) as streaming,
        http_client(served.base) as acks,
    ):
        query = {"id": stream_id, "chunks": chunks}
        with streaming.stream("GET", "/stream", params=query) as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers
            lines = response.iter_lines()
            for number in range(chunks):
                assert next(lines) == f"chunk {number}"
                if number + 1 < chunks:
                    assert acks.post("/stream/ack", params={"id": stream_id}).text == "ok"
            assert list(lines) == []


def test_websocket_through_the_middleware(served: Served) -> None:
    with websocket_to(served) as websocket:
        for text in ("hello", "again"):
            websocket.send(text)
            assert websocket.recv(timeout=REQUEST_TIMEOUT) == f"ada: {text}"
        websocket.send("bye")
        with pytest.raises(ConnectionClosedOK):
            websocket.recv(timeout=REQUEST_TIMEOUT)
    assert websocket.close_code == 1000


def test_lifespan_started(client: httpx.Client, served: Served) -> None:
    status = client.get("/_wf78/status", headers=AS_ADMIN)
    assert status.status_code == 200, status.text
    assert "submitted" in status.json()
    assert served.events() == ["startup", "engine-opened"]  # the engine first


def assert_closed(served: Served) -> None:
    """The inner app's lifespan shut down, and then the engine closed (SQLite checkpointed
    its write-ahead log into the file and removed it)."""
    assert served.events()[-1:] == ["shutdown"], served.tail()
    assert not served.database.with_name("served.db-wal").exists(), served.tail()


def terminate_while_busy(served: Served, names: list[str]) -> list[httpx.Response]:
    """Send one slow insert per name, SIGTERM once all are in the inner app, let them go
    on once the server is shutting down (it closed an idle connection); their answers."""
    limits = httpx.Limits(max_connections=len(names))
    with (
        http_client(served.base, timeout=STOP_WITHIN, limits=limits) as slow,
        concurrent.futures.ThreadPoolExecutor(len(names)) as pool,
    ):
        futures = [
            pool.submit(slow.post, "/slow-add", params={"name": name}, headers=AS_USER)
            for name in names
        ]
        try:
            with served.idle_connection() as idle:
                deadline = time.monotonic() + START_WITHIN
                while len(served.waiting()) < len(names):
                    assert time.monotonic() < deadline, f"in flight: {served.waiting()}"
                    time.sleep(0.02)
                assert served.process is not None
                served.process.send_signal(signal.SIGTERM)
                idle.settimeout(STOP_WITHIN)
                assert idle.recv(1) == b"", "an idle connection still open after SIGTERM"
            assert len(served.waiting()) == len(names)  # all still in flight
        finally:
            (served.folder / "go").touch()  # the requests in flight may finish now
        return [future.result() for future in futures]


@pytest.mark.parametrize("server", [*SERVERS, "wf78 serve --workers 2"])
def test_sigterm_drains_in_flight_requests(server: str, tmp_path: Path) -> None:
    """20 requests are in the inner app and a websocket is open when SIGTERM comes. Once the
    server stopped taking new requests the 20 go on, insert through the engine (still open)
    and are answered; the websocket is closed the server's way and does not hold the stop;
    the process exits with the server's status after the inner app's shutdown, and every
    acknowledged row is in the SQLite file."""
    served = Served(server, tmp_path)
    names = [f"drain-{number}" for number in range(IN_FLIGHT)]
    try:
        served.start()
        with websocket_to(served) as websocket:
            websocket.send("still here")
            assert websocket.recv(timeout=REQUEST_TIMEOUT) == "ada: still here"
            answers = terminate_while_busy(served, names)
            with pytest.raises(ConnectionClosed) as closed:
                websocket.recv(timeout=STOP_WITHIN)
        status = served.wait()
    finally:
        served.kill()
    assert [answer.status_code for answer in answers] == [200] * IN_FLIGHT, served.tail()
    assert all(answer.json()["gate"] and answer.json()["own"] for answer in answers)
    acknowledged = {answer.json()["id"] for answer in answers}
    received = closed.value.rcvd
    assert (received.code if received else None) == WEBSOCKET_CLOSE_AT_SIGTERM[server]
    assert status == SIGTERM_STATUS[server], served.tail()
    # No traceback through wf78 or the app (hypercorn logs its own when its graceful
    # timeout cancels the websocket's connection).
    log = served.tail(1000)
    assert "wf78_core" not in log and "served_app.py" not in log, log
    assert_closed(served)
    rows = served.rows()
    assert {row[0] for row in rows} == acknowledged
    assert sorted((row[1], row[2], row[3]) for row in rows) == sorted(
        (name, "acme", "ada") for name in names
    )


@pytest.mark.parametrize("server", ["uvicorn --lifespan off", "granian --interface asginl"])
def test_a_server_without_lifespan(server: str, tmp_path: Path) -> None:
    """Without the lifespan protocol the engine never opens: wf78's routes answer 503 saying
    so, the inner app's routes still work, and SIGTERM stops the process."""
    served = Served(server, tmp_path)
    try:
        served.start(ready="/")
        with http_client(served.base) as http:
            status = http.get("/_wf78/status", headers=AS_ADMIN)
            assert status.status_code == 503 and "lifespan" in status.json()["error"]
            added = http.post("/api/shop/items/mAdd", json={"pars": ["pen", 1]}, headers=AS_USER)
            assert added.status_code == 503 and added.json()["kind"] == "unavailable"
            assert http.get("/").text == "home of served_app"
        assert served.terminate() in (0, -signal.SIGTERM)
    finally:
        served.kill()
    assert served.events() == []  # nothing ran the inner app's lifespan either


def test_hypercorn_trio_worker_is_refused(tmp_path: Path) -> None:
    """``hypercorn -k trio``: the start is refused naming the asyncio requirement, and the
    process exits (never a hang). hypercorn 0.18 exits 0 even so: its parent process
    loses the worker's status, so the status is not checked."""
    served = Served("hypercorn -k trio", tmp_path)
    try:
        served.start(ready=None)
        served.wait()
    finally:
        served.kill()
    log = served.tail(400)
    assert "lifespan.startup.failed" in log or "Lifespan failure in startup" in log, log
    assert "wf78 needs asyncio, and this runs on trio" in log, log
    assert served.events() == []


async def never_called(scope: dict[str, object], receive: object, send: object) -> None:
    """An ASGI app for uvicorn's configuration check."""


def test_the_bare_install_serves_websockets() -> None:
    """``wf78 serve`` and ``wf78 demo`` run uvicorn, which passes websockets to the app only
    with a websocket library installed (else it answers the upgrade 404 and warns): the
    bare install's dependencies bring one, and uvicorn finds it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = {
        re.split(r"[<>=\[ ;]", need, maxsplit=1)[0].lower()
        for need in pyproject["project"]["dependencies"]
    }
    assert "websockets" in names
    config = uvicorn.Config(app=never_called, ws="auto", log_config=None)
    config.load()
    assert config.ws_protocol_class is not None


# Exit status when the engine cannot start: None = not checked (hypercorn 0.18 exits 0, its
# parent process loses the worker's status).
START_FAILURE_STATUS: dict[str, int | None] = {
    "uvicorn": 3,
    "hypercorn": None,
    "granian": 1,
    "wf78 serve": 1,
}


@pytest.mark.parametrize("server", SERVERS)
def test_a_failed_start_ends_the_process(server: str, tmp_path: Path) -> None:
    """A required source that cannot open: the server gets ``lifespan.startup.failed`` with
    wf78's reason and the process exits (never a hang, never serving without its engine);
    the inner app's own start-up never ran."""
    served = Served(server, tmp_path)
    (tmp_path / "a-file").touch()  # so a database under it cannot be made
    config = (tmp_path / "wf78.toml").read_text(encoding="utf-8")
    config = config.replace(str(served.database), str(tmp_path / "a-file" / "served.db"))
    config = config.replace('type = "sqlite"', 'type = "sqlite"\nrequired = true')
    (tmp_path / "wf78.toml").write_text(config, encoding="utf-8")
    try:
        served.start(ready=None)
        status = served.wait()
    finally:
        served.kill()
    log = served.tail(1000)
    assert "wf78: DataSourceError: required data source 'main'" in log, log
    if START_FAILURE_STATUS[server] is not None:
        assert status == START_FAILURE_STATUS[server], log
    assert served.events() == []


def test_serve_refuses_port_0_with_workers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's supervisor binds the port after ``wf78 serve`` announced it: with
    ``--workers`` a port 0 was announced as ``http://127.0.0.1:0``. Refused instead."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # serve puts the app dir first
    # Refused before the target is imported (none exists: nothing could start here).
    assert main(["serve", "no_such_module_78:app", "--workers", "2", "--port", "0"]) == 2
    assert "--port 0 (any free port) serves one process" in capsys.readouterr().err
