"""The dashboard's read routes: the 15-minute history (this process's and, on the redis
backend, the cluster's), runs filtered and paginated, a run as a DAG, the workflows with
their next fire times; and how they refuse (400 naming the parameter, 404, 401/403 alike
for every run id)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from wf78_core import Engine, TaskContext, hookimpl
from wf78_core.core.history import WINDOW, Sample, SourceSample, merge
from wf78_core.core.stats import LatencyHistogram, percentile_of
from wf78_core.http.middleware import Wf78Middleware

pytestmark = pytest.mark.anyio

ADMIN = "dash-admin"
USER = "dash-user"
PREFIX = "/_wf78"
REDIS = "redis://127.0.0.1:6379/0"
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Actions:
    """``demo.big``: a result of 5,000 characters; ``demo.hang``: never ends."""

    @staticmethod
    async def big(ctx: TaskContext) -> str:
        return "x" * 5000

    @staticmethod
    async def hang(ctx: TaskContext) -> None:
        await anyio.sleep_forever()

    @hookimpl
    def wf78_register_actions(self, registry: Any) -> None:
        registry.add("demo.big", self.big)
        registry.add("demo.hang", self.hang)


def make_config(path: Path | None, **engine: Any) -> dict[str, Any]:
    add = {"action": "add", "table": "Items", "values": {"name": "from a run"}}
    config: dict[str, Any] = {
        "engine": {"drain_timeout": 1.0, **engine},
        "tables": {
            "Items": {"columns": {"name": "text"}, "route": "api/demo", "data_source": "db"}
        },
        "workflows": [
            {
                "id": "ingest",
                "tasks": [
                    {"id": "write", "params": add},
                    {"id": "big", "action": "demo.big", "depends_on": ["write"]},
                    {
                        "id": "count",
                        "depends_on": ["write"],
                        "params": {"action": "count", "table": "Items"},
                    },
                ],
            },
            {"id": "slow", "tasks": [{"id": "hang", "action": "demo.hang"}]},
            {
                "id": "hourly",
                "trigger": "schedule",
                "schedule": "0 * * * *",
                "tasks": [{"id": "write", "params": add}],
            },
            {
                "id": "daily",
                "trigger": "schedule",
                "schedule": 86400,
                "tasks": [{"id": "write", "params": add}],
            },
            {
                "id": "on_order",
                "trigger": "event",
                "event": "order",
                "tasks": [{"id": "write", "params": add}],
            },
        ],
        "auth": {
            "tokens": {
                ADMIN: {"uid": "u-root", "uname": "root", "roles": ["admin"]},
                USER: {"uid": "u-ada", "uname": "ada"},
            }
        },
    }
    if path is not None:
        config["datasources"] = {"db": {"type": "sqlite", "url": f"sqlite:///{path}"}}
    return config


@asynccontextmanager
async def serve(config: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    app = Wf78Middleware(Starlette(), engine=Engine(config, plugins=[Actions()]))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://test",
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as client:
            yield client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_config(tmp_path / "dash.db")) as client:
        yield client


async def start(client: httpx.AsyncClient, workflow: str) -> str:
    response = await client.post(f"{PREFIX}/runs", json={"workflow": workflow})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:
            run: dict[str, Any] = (await client.get(f"{PREFIX}/runs/{run_id}")).json()
            if run["status"] in TERMINAL:
                return run
            await anyio.sleep(0.02)


# -- history -----------------------------------------------------------------------------


async def test_history_holds_per_second_samples_of_the_traffic(
    client: httpx.AsyncClient,
) -> None:
    for number in range(5):
        added = await client.post("/api/demo/Items/mAdd", json={"pars": [f"n{number}"]})
        assert added.status_code == 200, added.text
    await anyio.sleep(2.2)  # two whole seconds: two samples at least
    view = (await client.get(f"{PREFIX}/history")).json()
    assert view["window"] == WINDOW and view["interval"] == 1.0
    assert view["cluster"] is False and view["problem"] is None
    samples = view["samples"]
    assert len(samples) >= 2
    times = [sample["t"] for sample in samples]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(later - earlier >= 1 for earlier, later in itertools.pairwise(times))
    busy = [sample for sample in samples if sample["sources"]["db"]["ops"] > 0]
    assert busy, samples
    # The five adds (and the start's table maintenance) are in the samples' rates.
    assert sum(s["sources"]["db"]["ops"] for s in samples) >= 5 * 0.9
    assert all(s["sources"]["db"]["p99"] >= s["sources"]["db"]["p50"] > 0 for s in busy)
    assert "ingest" in samples[-1]["workflows"] and samples[-1]["queued"] == 0
    # ``since``: only what came after.
    later = (await client.get(f"{PREFIX}/history", params={"since": times[-1]})).json()
    assert all(sample["t"] > times[-1] for sample in later["samples"])


async def test_history_refuses_a_since_that_is_no_time(client: httpx.AsyncClient) -> None:
    for bad in ("yesterday", "-5", "1e9", "²"):
        response = await client.get(f"{PREFIX}/history", params={"since": bad})
        assert response.status_code == 400, bad
        body = response.json()
        assert body["field"] == "since" and "seconds since the epoch" in body["error"]


async def test_the_ring_is_bounded_to_fifteen_minutes(tmp_path: Path) -> None:
    engine = Engine(make_config(tmp_path / "ring.db"), plugins=[Actions()])
    history = engine.history
    assert history.ring.maxlen == WINDOW == 900
    for second in range(WINDOW + 50):
        history.ring.append(
            Sample(t=second, ops=0, errors=0, queued=0, running=0, sources={}, workflows={})
        )
    assert len(history.ring) == WINDOW
    assert history.samples()[0].t == 50
    assert [s.t for s in history.samples(since=WINDOW + 47)] == [WINDOW + 48, WINDOW + 49]


def test_merge_adds_rates_and_merges_latency_histograms() -> None:
    fast, slow = LatencyHistogram(), LatencyHistogram()
    for _ in range(98):
        fast.record(0.001)
    for _ in range(2):
        slow.record(0.5)
    buckets = [{i: c for i, c in enumerate(histogram.counts) if c} for histogram in (fast, slow)]

    def sample(ops: float, bucket: dict[int, int], queued: int, running: int) -> Sample:
        source = SourceSample(
            ops=ops,
            errors=1.0,
            p50=percentile_of(bucket, 0.5),
            p99=percentile_of(bucket, 0.99),
            buckets=bucket,
        )
        return Sample(
            t=7,
            ops=ops,
            errors=1.0,
            queued=queued,
            running=running,
            sources={"db": source},
            workflows={"ingest": queued},
        )

    merged = merge([sample(98, buckets[0], 4, 1), sample(2, buckets[1], 4, 2)])
    db = merged.sources["db"]
    assert (merged.t, merged.ops, merged.errors, merged.nodes) == (7, 100, 2.0, 2)
    assert (merged.queued, merged.running, merged.workflows) == (4, 3, {"ingest": 4})
    assert db.ops == 100 and db.errors == 2.0
    # p50 of the whole is the fast process's, p99 reaches the slow one's.
    assert db.p50 == pytest.approx(fast.percentile(0.5))
    assert db.p99 == pytest.approx(slow.percentile(0.99))


class _AwayStore:
    """Fault injection: a store whose Redis does not answer."""

    async def publish(self, sample: Sample) -> None:
        raise ConnectionError("connection refused")

    async def fetch(self, since: int, until: int) -> dict[int, list[Sample]]:
        raise ConnectionError("connection refused")

    async def close(self) -> None:
        return None


async def test_history_without_its_store_answers_this_process_and_why(tmp_path: Path) -> None:
    engine = Engine(make_config(tmp_path / "away.db"), plugins=[Actions()])
    engine.history.make_store = _AwayStore
    async with engine:
        await anyio.sleep(1.5)
        view = await engine.history.fetch()
    assert view.cluster is False and view.samples
    assert view.problem is not None and "connection refused" in view.problem


# -- runs: filters and pages -------------------------------------------------------------


async def test_runs_filter_by_workflow_status_and_time_and_paginate(
    client: httpx.AsyncClient,
) -> None:
    before = time.time()
    ingests = [await start(client, "ingest") for _ in range(5)]
    for run_id in ingests:
        assert (await finished(client, run_id))["status"] == "succeeded"
    slow = await start(client, "slow")

    async def runs(**query: Any) -> dict[str, Any]:
        response = await client.get(f"{PREFIX}/runs", params=query)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    page = await runs(workflow="ingest", limit=2)
    assert [r["id"] for r in page["runs"]] == ingests[::-1][:2]
    assert (page["total"], page["offset"], page["next_offset"]) == (5, 0, 2)
    page = await runs(workflow="ingest", limit=2, offset=4)
    assert [r["id"] for r in page["runs"]] == [ingests[0]] and page["next_offset"] is None
    assert [r["id"] for r in (await runs(status="running"))["runs"]] == [slow]
    assert (await runs(status="succeeded", workflow="slow"))["runs"] == []
    assert (await runs(since=before - 60, workflow="ingest"))["total"] == 5
    assert (await runs(since=time.time() + 60))["runs"] == []
    assert (await runs(until=before - 60))["runs"] == []
    # Unfiltered: newest first, paged without a total.
    page = await runs(limit=3)
    assert [r["id"] for r in page["runs"]] == [slow, *ingests[::-1][:2]]
    assert page["next_offset"] == 3 and "total" not in page
    cancelled = await client.post(f"{PREFIX}/runs/{slow}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert [r["id"] for r in (await runs(status="cancelled"))["runs"]] == [slow]


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ({"status": "done"}, "status", "status must be one of"),
        ({"workflow": "nope"}, "workflow", "unknown workflow 'nope'"),
        ({"since": "soon"}, "since", "seconds since the epoch"),
        ({"until": "later"}, "until", "seconds since the epoch"),
        ({"offset": "-1"}, "offset", "offset must be an integer from 0"),
        ({"limit": "0"}, "limit", "limit must be an integer from 1"),
    ],
)
async def test_runs_refuse_a_bad_filter_naming_it(
    client: httpx.AsyncClient, query: dict[str, str], field: str, words: str
) -> None:
    response = await client.get(f"{PREFIX}/runs", params=query)
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field and words in body["error"], body


# -- one run as a DAG --------------------------------------------------------------------


async def test_run_graph_has_edges_params_cut_results_and_sources(
    client: httpx.AsyncClient,
) -> None:
    run_id = await start(client, "ingest")
    assert (await finished(client, run_id))["status"] == "succeeded"
    response = await client.get(f"{PREFIX}/runs/{run_id}/graph")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["run"]["id"] == run_id and view["run"]["status"] == "succeeded"
    tasks = {task["id"]: task for task in view["tasks"]}
    assert tasks["write"]["depends_on"] == [] and tasks["big"]["depends_on"] == ["write"]
    assert tasks["count"]["depends_on"] == ["write"]
    assert tasks["write"]["params"] == (
        '{"action":"add","table":"Items","values":{"name":"from a run"}}'
    )
    assert tasks["write"]["data_source"] == "db" and tasks["write"]["attempts"] == 1
    assert tasks["count"]["result"].startswith('{"value":1,"data_source":"db"')
    assert tasks["count"]["result_truncated"] is False
    big = tasks["big"]
    assert big["result_truncated"] is True and len(big["result"]) == 2001
    assert big["result"].startswith('"xxx') and big["result"].endswith("…")
    assert all(t["started"] <= t["finished"] for t in tasks.values())
    assert all(t["dead_letter"] is None for t in tasks.values())


async def test_run_graph_of_an_unknown_run_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{PREFIX}/runs/no-such-run/graph")
    assert response.status_code == 404
    body = response.json()
    assert body["field"] == "run_id" and "no-such-run" in body["error"]


# -- workflows ---------------------------------------------------------------------------


async def test_workflows_list_trigger_schedule_and_next_fire(client: httpx.AsyncClient) -> None:
    answer = (await client.get(f"{PREFIX}/workflows")).json()
    now = answer["now"]
    workflows = {w["id"]: w for w in answer["workflows"]}
    assert workflows["ingest"]["trigger"] == "api" and workflows["ingest"]["next_fire"] is None
    assert workflows["ingest"]["tasks"] == ["write", "big", "count"]
    assert workflows["on_order"]["event"] == "order"
    hourly = workflows["hourly"]
    top = datetime.fromtimestamp(now, UTC).replace(minute=0, second=0, microsecond=0)
    assert hourly["schedule"] == "0 * * * *" and hourly["next_fire_exact"] is True
    assert hourly["next_fire"] == top.timestamp() + 3600
    daily = workflows["daily"]
    # In process, an interval counts from the engine's start: about a day from now.
    assert daily["next_fire_exact"] is False
    assert now + 86400 - 30 <= daily["next_fire"] <= now + 86400


# -- who may ask ---------------------------------------------------------------------------


async def test_a_non_admin_learns_nothing_of_which_runs_exist(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "ingest")
    await finished(client, run_id)
    for who, status in ((USER, 403), (None, 401)):
        headers = {"Authorization": f"Bearer {who}"} if who else {"Authorization": ""}
        answers = []
        for path in (
            f"/runs/{run_id}/graph",
            "/runs/no-such-run/graph",
            f"/runs/{run_id}",
            "/runs/no-such-run",
            "/history",
            "/workflows",
            "/runs?workflow=ingest",
        ):
            response = await client.get(PREFIX + path, headers=headers)
            assert response.status_code == status, (path, response.text)
            answers.append(response.content)
        assert len(set(answers)) == 1  # the same answer for every id and route


# -- the cluster's history ---------------------------------------------------------------


async def test_history_on_redis_merges_every_process(namespace: str, tmp_path: Path) -> None:
    settings = {"backend": "redis", "backend_url": REDIS, "backend_namespace": namespace}
    first = make_config(tmp_path / "a.db", **settings)
    second = make_config(tmp_path / "b.db", **settings)
    async with serve(first) as one, serve(second) as two:
        for number in range(3):
            assert (await one.post("/api/demo/Items/mAdd", json={"pars": [f"a{number}"]})).json()[
                "res"
            ] == 0
            assert (await two.post("/api/demo/Items/mAdd", json={"pars": [f"b{number}"]})).json()[
                "res"
            ] == 0
        await anyio.sleep(2.5)
        view = (await one.get(f"{PREFIX}/history")).json()
        assert view["cluster"] is True and view["problem"] is None
        both = [sample for sample in view["samples"] if sample["nodes"] == 2]
        assert len(both) >= 2, view["samples"]
        ops = sum(s["sources"]["db"]["ops"] for s in view["samples"])
        assert ops >= 6 * 0.9, view["samples"]
        from_two = (await two.get(f"{PREFIX}/history")).json()
        assert {s["t"] for s in both} <= {s["t"] for s in from_two["samples"]}


async def test_a_fault_of_wf78_is_a_logged_500_in_the_envelope(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(make_config(tmp_path / "fault.db"), plugins=[Actions()])

    async def broken(limit: int) -> list[Any]:
        raise RuntimeError("the run store fell over")  # fault injection

    engine.fetch_recent_runs = broken  # type: ignore[method-assign]
    app = Wf78Middleware(Starlette(), engine=engine)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as client:
            response = await client.get(f"{PREFIX}/runs")
            assert response.status_code == 500
            assert response.json() == {"error": "GET /_wf78/runs failed: see the server's log"}
            assert "the run store fell over" in caplog.text
            refused = await client.post(f"{PREFIX}/history")
            assert refused.status_code == 405
            assert "allowed: GET, HEAD" in refused.json()["error"]
