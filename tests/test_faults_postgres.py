"""Fault injection against a private PostgreSQL (``tests.pgutil.PrivatePostgres``: ``initdb``
in a temporary folder, its own port): the server is killed (SIGKILL, a crash) during a burst of
writes through the HTTP routes. Every write acknowledged is in the table afterwards, counted by
the database itself; every write refused while it was down is a 503 with ``Retry-After``."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from tests.pgutil import PrivatePostgres, fetch
from wf78_core import Engine
from wf78_core.http.middleware import Wf78Middleware

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOKEN = "t-alice"
TABLE = "items"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


def _config(url: str) -> dict[str, Any]:
    return {
        "engine": {"drain_timeout": 2.0, "journal": "memory", "retry_backoff": 0.01},
        "agents": {"health_interval": 0.2},
        "datasources": {"db": {"type": "postgres", "url": url, "maxsize": 4}},
        "tables": {
            TABLE: {
                "columns": {"name": "text", "n": "int"},
                "owner": "cid",
                "route": "api/demo",
                "data_source": "db",
            }
        },
        "auth": {"tokens": {TOKEN: {"uid": "u-alice", "cid": "acme", "uname": "alice"}}},
    }


async def test_postgres_killed_during_a_burst_of_writes_loses_no_acknowledged_write() -> None:
    with PrivatePostgres() as server:
        app: Any = Wf78Middleware(Starlette(), engine=Engine(_config(server.url)))
        acknowledged: dict[int, str] = {}
        refused: list[httpx.Response] = []
        quarter = anyio.Event()
        down = anyio.Event()
        up = anyio.Event()
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(
                transport=transport, base_url=f"http://t/api/demo/{TABLE}/", timeout=30
            ) as client:
                headers = {"authorization": f"Bearer {TOKEN}"}
                total = 1200

                async def write(n: int) -> None:
                    answer = await client.post("mAdd", json={"pars": [f"w{n}", n]}, headers=headers)
                    if answer.status_code == 200 and answer.json()["res"] == 0:
                        acknowledged[n] = str(answer.json()["back"])
                        if len(acknowledged) >= total // 4:
                            quarter.set()
                    else:
                        refused.append(answer)

                async def crash() -> None:
                    await quarter.wait()
                    await anyio.to_thread.run_sync(server.kill)
                    down.set()
                    await anyio.sleep(2.0)
                    await anyio.to_thread.run_sync(server.start)
                    up.set()

                began = time.monotonic()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(crash)
                    limiter = anyio.Semaphore(64)

                    async def one(n: int) -> None:
                        async with limiter:
                            await write(n)

                    for n in range(total):
                        if n == total // 2:
                            await down.wait()
                        if n == total - 100:
                            await up.wait()
                            await anyio.sleep(1.0)  # back in rotation
                        tg.start_soon(one, n)
                elapsed = time.monotonic() - began
        stored = {
            str(row[0]): row[1] for row in fetch(f"SELECT id, n FROM {TABLE}", url=server.url)
        }
    summary = (
        f"{len(acknowledged)} acknowledged, {len(refused)} refused, {len(stored)} stored, "
        f"{elapsed:.1f}s; refused statuses {sorted({r.status_code for r in refused})}"
    )
    print(summary)
    assert refused, summary  # the crash was seen by callers
    for answer in refused:
        assert answer.status_code == 503, (answer.status_code, answer.text)
        assert answer.headers.get("retry-after"), answer.headers
        assert answer.json()["kind"] == "unavailable", answer.text
    missing = [n for n, row_id in acknowledged.items() if stored.get(row_id) != n]
    assert not missing, (summary, missing[:10])
    # Acknowledged writes after the restart too: the source came back into rotation.
    assert any(n >= total - 100 for n in acknowledged), summary
