"""``wf78 demo``: serve the example app on the embedded default, with traffic for the
dashboard."""

from __future__ import annotations

import argparse
import importlib
import itertools
import random
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from wf78_core.cli.common import UsageError, plugin_modules
from wf78_core.cli.server import check_port, run_server, url_host
from wf78_core.errors import Wf78Error

if TYPE_CHECKING:
    # Imported when the demo runs: the other commands do without it.
    import httpx

__all__ = ["DEMO_APP", "DEMO_KEEP", "DEMO_PACE", "Traffic", "demo_command"]

DEMO_APP = "examples.app"
# Seconds between two rounds of demo traffic (a round is about ten requests).
DEMO_PACE = 0.1
# Rows of each table the traffic keeps: older ones are deleted as new ones come.
DEMO_KEEP = 50


class Traffic:
    """Requests against the demo's own port so the dashboard has something to show: data
    routes as two users, workflow runs and events as the admin. One request at a time."""

    def __init__(self, admin_token: str, user_token: str, stopping: Callable[[], bool]) -> None:
        self.admin = {"authorization": f"Bearer {admin_token}"}
        self.user = {"authorization": f"Bearer {user_token}"}
        self.stopping = stopping
        self.requests = 0
        self.errors = 0
        self.first_errors: list[str] = []
        self.rng = random.Random(78)  # the same mix every time

    def _error(self, what: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 3:
            self.first_errors.append(what)

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        expect: int = 200,
    ) -> Any:
        """Send one request; the decoded JSON answer, or None when it failed (counted)."""
        import httpx

        self.requests += 1
        try:
            response = await client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as error:
            if not self.stopping():  # the server going away is not the demo's error
                self._error(f"{method} {path}: {type(error).__name__}: {error}")
            return None
        if response.status_code != expect:
            self._error(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
            return None
        if "json" not in response.headers.get("content-type", ""):
            return response.text
        data = response.json()
        if isinstance(data, dict) and data.get("res", 0) != 0:
            self._error(f"{method} {path}: {data.get('errmsg')}")
            return None
        return data

    async def _add(
        self,
        client: httpx.AsyncClient,
        table: str,
        headers: dict[str, str],
        values: list[Any],
        kept: deque[str],
    ) -> None:
        added = await self._call(
            client, "POST", f"/api/demo/{table}/mAdd", headers, {"pars": values}
        )
        if added is not None:
            kept.append(str(added["back"]))
        if len(kept) > DEMO_KEEP:
            oldest = kept.popleft()
            await self._call(client, "POST", f"/api/demo/{table}/mdel", headers, {"mid": oldest})

    async def run(self, base_url: str) -> None:
        import httpx

        rng = self.rng
        items: deque[str] = deque()
        notes: deque[str] = deque()
        timeout = httpx.Timeout(10.0)
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
            for round_ in itertools.count():
                name = f"item-{round_}"
                item = [name, rng.randint(1, 100), round(rng.uniform(1, 500), 2)]
                await self._add(client, "items", self.admin, item, items)
                await self._call(
                    client, "POST", "/api/demo/items/get", self.admin, {"getnumber": 10}
                )
                note = [f"note {round_}", rng.choice(("buy ink", "call Bo", "ship it"))]
                await self._add(client, "notes", self.user, note, notes)
                await self._call(client, "POST", "/api/demo/notes/get", self.user, {"getnumber": 5})
                # A plain user asking for priority 0 is held to its cap (1): /hello shows it.
                await self._call(client, "GET", "/hello", {**self.user, "x-wf78-priority": "0"})
                if round_ % 3 == 0:
                    payload = {
                        "values": {"level": rng.choice(("info", "warning")), "message": name}
                    }
                    await self._call(
                        client, "POST", "/_wf78/events/log", self.admin, payload, expect=202
                    )
                if round_ % 5 == 0:
                    operation = {"action": "get", "table": "items", "limit": 5}
                    body = {"workflow": "high_priority_db_ops", "context": {"operation": operation}}
                    started = await self._call(
                        client, "POST", "/_wf78/runs", self.admin, body, expect=202
                    )
                    if started is not None:
                        await self._call(
                            client, "GET", f"/_wf78/runs/{started['run_id']}", self.admin
                        )
                if round_ % 10 == 0:
                    await self._call(client, "GET", "/_wf78/status", self.admin)
                await anyio.sleep(DEMO_PACE)


def _import_demo_app() -> Any:
    try:
        return importlib.import_module(DEMO_APP)
    except ModuleNotFoundError as error:
        if error.name not in ("examples", DEMO_APP):
            raise
        raise Wf78Error(
            f"the demo app ({DEMO_APP}) is not importable: run wf78 demo from a source "
            "checkout of wf78 (the examples/ folder is not part of the wheel)"
        ) from None


def demo_command(args: argparse.Namespace) -> int:
    import uvicorn

    check_port(args.port)
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be a positive number of seconds")
    plugin_modules(args)  # each importable, or a usage error now
    module = _import_demo_app()
    db = Path(args.db).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    admin_token, user_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    app = module.build_app(db, admin_token=admin_token, user_token=user_token, plugins=args.plugin)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    traffic = Traffic(admin_token, user_token, stopping=lambda: server.should_exit)

    def announce(port: int) -> None:
        url = f"http://{url_host(args.host)}:{port}"
        lines = [
            f"wf78 demo: {DEMO_APP} on {url} (database {db})",
            f"  app        {url}/   ({url}/hello, {url}/stream)",
            # In the fragment: never sent to the server, so never in an access log.
            f"  dashboard  {url}/_wf78/#token={admin_token}",
            f"  status     {url}/_wf78/status",
            f"  metrics    {url}/_wf78/metrics",
            f"  data       {url}/api/demo/items/get, {url}/api/demo/notes/get",
            f"  admin token: {admin_token}   user token: {user_token}",
            f"  e.g. curl -H 'Authorization: Bearer {admin_token}' {url}/_wf78/status",
            "no traffic (--no-traffic)"
            if args.no_traffic
            else "sending demo traffic in the background",
        ]
        lines.append(
            "Ctrl-C to stop"
            if args.duration is None
            else f"stopping after {args.duration:g} seconds (Ctrl-C to stop sooner)"
        )
        print("\n".join(lines), flush=True)

    started = time.monotonic()
    run_server(
        server,
        announce,
        while_serving=None if args.no_traffic else traffic.run,
        duration=args.duration,
    )
    elapsed = time.monotonic() - started
    for message in traffic.first_errors:
        print(f"  error: {message}", file=sys.stderr)
    print(
        f"wf78 demo: served {elapsed:.1f}s, {traffic.requests} requests sent, "
        f"{traffic.errors} errors; database {db}",
        flush=True,
    )
    return 0 if traffic.errors == 0 else 1
