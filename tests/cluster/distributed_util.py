"""One serving process and several worker processes on one Redis Streams namespace, for
tests/cluster/test_distributed.py.

:class:`Cluster` writes the configuration (JSON) twice, for the workers (``consume =
true``) and for the serving process (``consume = false``: it only queues runs and reads
them back), starts ``wf78 serve`` on an app module wrapped with the test plugin and
``wf78 worker --plugin distributed_plugin`` N times, waits (bounded) until every one is
ready, and on exit stops them: SIGTERM, then SIGKILL for whatever does not exit in time.
Every process is started and stopped by its own id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

__all__ = ["ADMIN", "Cluster", "Process", "free_port"]

TESTS = Path(__file__).resolve().parent
ADMIN = "distributed-admin-token"
# Seconds a process may take to get ready, and to exit after SIGTERM.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

APP = """\
import distributed_plugin

from wf78_core import Engine, Wf78Middleware


async def inner(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({{"type": "lifespan.startup.complete"}})
        await send({{"type": "lifespan.shutdown.complete"}})
        return
    await send({{"type": "http.response.start", "status": 404, "headers": []}})
    await send({{"type": "http.response.body", "body": b"not here"}})


app = Wf78Middleware(inner, engine=Engine({config!r}, plugins=[distributed_plugin]))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """A child process whose stderr a thread keeps reading (so the pipe never fills)."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid
        self._terminated = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "worker ready" in line:
                self.ready.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def freeze(self) -> None:
        """SIGSTOP: it keeps what it holds and does nothing more (``kill`` still works)."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: it goes on from where ``freeze`` stopped it."""
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def terminate(self) -> None:
        """SIGTERM, once: a second one may end it while it shuts down."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            os.kill(self.pid, signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM; SIGKILL when it has not exited within STOP_TIMEOUT. Its exit status."""
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=5)
        if self.process.stderr is not None and not self._reader.is_alive():
            self.process.stderr.close()
        return self.process.returncode


class Cluster:
    """``with Cluster(folder, config) as cluster:``: one ``wf78 serve`` and ``workers``
    ``wf78 worker`` processes sharing the redis backend ``config`` names."""

    def __init__(self, folder: Path, config: dict[str, Any], workers: int = 3) -> None:
        self.folder = folder
        self.config = config
        self.count = workers
        self.workers: list[Process] = []
        self.server: Process | None = None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(
            base_url=self.base, timeout=10.0, headers={"authorization": f"Bearer {ADMIN}"}
        )
        #: exit status of each worker stopped on exit (None: killed by the test)
        self.exit_codes: list[int | None] = []

    def _write(self, name: str, consume: bool) -> Path:
        config = json.loads(json.dumps(self.config))
        config["engine"]["consume"] = consume
        config.setdefault("auth", {}).setdefault("tokens", {})[ADMIN] = {
            "uid": "u-admin",
            "cid": "test",
            "uname": "admin",
            "roles": ["admin"],
        }
        path = self.folder / name
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        return path

    def __enter__(self) -> Self:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WF78_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        workers = self._write("workers.json", consume=True)
        served = self._write("serve.json", consume=False)
        (self.folder / "distapp.py").write_text(APP.format(config=str(served)), encoding="utf-8")
        python = [sys.executable, "-m", "wf78_core.cli"]
        try:
            self.server = Process(
                "server",
                [
                    *python,
                    *("serve", "distapp:app", "--port", str(self.port)),
                    *("--app-dir", str(self.folder), "--log-level", "warning"),
                ],
                self.folder,
                env,
            )
            for index in range(self.count):
                self.workers.append(
                    Process(
                        f"worker{index}",
                        [
                            *python,
                            *("worker", "--config", str(workers)),
                            *("--plugin", "distributed_plugin"),
                        ],
                        self.folder,
                        env,
                    )
                )
            self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for worker in self.workers:
            while not worker.ready.wait(0.1):
                if worker.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{worker.name} did not get ready:\n{worker.stderr}")
        assert self.server is not None
        while True:
            if self.server.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"wf78 serve did not answer:\n{self.server.stderr}")
            try:
                if self.http.get("/_wf78/status").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        self.http.close()
        for worker in self.workers:  # SIGTERM to all first: they drain side by side
            worker.terminate()
        for worker in self.workers:
            killed = worker.process.poll() == -signal.SIGKILL
            code = worker.stop()
            self.exit_codes.append(None if killed else code)
        if self.server is not None:
            self.server.stop()

    # -- talking to the serving process --------------------------------------------------

    def start(self, workflow: str, context: dict[str, Any]) -> str:
        """Start a run through ``POST /_wf78/runs``; its id."""
        answer = self.http.post("/_wf78/runs", json={"workflow": workflow, "context": context})
        assert answer.status_code == 202, answer.text
        run_id: str = answer.json()["run_id"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        """``GET /_wf78/runs/{id}``."""
        answer = self.http.get(f"/_wf78/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        run: dict[str, Any] = answer.json()
        return run

    def finished(self, run_ids: list[str], within: float) -> dict[str, dict[str, Any]]:
        """Every run once none is pending or running (polled; AssertionError after
        ``within`` seconds, naming the runs still open)."""
        deadline = time.monotonic() + within
        done: dict[str, dict[str, Any]] = {}
        while True:
            for run_id in run_ids:
                if run_id not in done:
                    run = self.run(run_id)
                    if run["status"] not in ("pending", "running"):
                        done[run_id] = run
            if len(done) == len(run_ids):
                return done
            if time.monotonic() > deadline:
                open_runs = {r: self.run(r)["tasks"] for r in run_ids if r not in done}
                logs = "\n".join(f"--- {w.name}\n{w.stderr[-3000:]}" for w in self.workers)
                raise AssertionError(f"runs still open after {within}s: {open_runs}\n{logs}")
            time.sleep(0.05)
