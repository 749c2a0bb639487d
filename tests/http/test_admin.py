"""The admin routes under ``/_wf78`` through ``Wf78Middleware``: runs, events, cancel,
status, Prometheus metrics and the dashboard files, and who may use them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import prometheus_client
import pytest
from asgi_lifespan import LifespanManager
from conftest import Probe
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from wf78_core import Engine, EngineStats
from wf78_core.http.metrics import CONTENT_TYPE_LATEST
from wf78_core.http.middleware import Wf78Middleware

ADMIN = "admin-token"
USER = "user-token"
PREFIX = "/_wf78"
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_config(path: Path, **engine: Any) -> dict[str, Any]:
    write = {"action": "add", "table": "Items"}
    return {
        "engine": {"drain_timeout": 2.0, **engine},
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
                "id": "ingest",
                "priority": 1,
                "max_concurrent": 4,
                "tasks": [
                    {"id": "write", "params": write},
                    {
                        "id": "count",
                        "depends_on": ["write"],
                        "params": {"action": "count", "table": "Items"},
                    },
                ],
            },
            {
                "id": "on_signup",
                "priority": 2,
                "trigger": "event",
                "event": "signup",
                "tasks": [{"id": "write", "params": write}],
            },
            {"id": "slow", "priority": 3, "tasks": [{"id": "hang", "action": "probe.hang"}]},
        ],
        "auth": {
            "tokens": {
                ADMIN: {"uid": "u-root", "uname": "root", "roles": ["admin"]},
                USER: {"uid": "u-bob", "uname": "bob", "roles": ["reader"]},
            }
        },
    }


async def home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("the app")


APP = Starlette(routes=[Route("/", home)])


@asynccontextmanager
async def serve(
    tmp_path: Path, probe: Probe, *, max_body: int = 1 << 20, **engine: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The middleware over a Starlette app, with the probe's actions (``probe.hang``)."""
    config = make_config(tmp_path / "admin.db", **engine)
    app = Wf78Middleware(APP, engine=Engine(config, plugins=[probe]), max_body=max_body)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://test",
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as client:
            yield client


@pytest.fixture
async def client(tmp_path: Path, probe: Probe) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(tmp_path, probe) as client:
        yield client


async def finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The run's snapshot once it is terminal (bounded: the runs here take milliseconds)."""
    with anyio.fail_after(5):
        while True:
            response = await client.get(f"{PREFIX}/runs/{run_id}")
            assert response.status_code == 200, response.text
            run: dict[str, Any] = response.json()
            if run["status"] in TERMINAL:
                return run
            await anyio.sleep(0.01)


async def start(client: httpx.AsyncClient, workflow: str, **context: Any) -> str:
    response = await client.post(f"{PREFIX}/runs", json={"workflow": workflow, "context": context})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


# -- runs ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_start_run_then_get_it_finished_with_task_states(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{PREFIX}/runs",
        json={"workflow": "ingest", "context": {"values": {"name": "apple", "qty": 3}}},
    )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"run_id"}
    assert response.headers["location"] == f"{PREFIX}/runs/{body['run_id']}"

    run = await finished(client, body["run_id"])
    assert run["id"] == body["run_id"]
    assert run["workflow"] == "ingest"
    assert run["status"] == "succeeded"
    assert run["context"] == {"values": {"name": "apple", "qty": 3}}
    assert set(run["tasks"]) == {"write", "count"}
    for task in run["tasks"].values():
        assert task["state"] == "succeeded"
        assert task["data_source"] == "db"
        assert task["started"] <= task["finished"]
    assert run["tasks"]["write"]["finished"] <= run["tasks"]["count"]["started"]
    assert run["tasks"]["count"]["result"]["value"] == 1  # a Result struct, as JSON


@pytest.mark.anyio
async def test_recent_runs_newest_first_with_limit(client: httpx.AsyncClient) -> None:
    run_ids = []
    for number in range(3):
        run_ids.append(await start(client, "ingest", values={"name": f"n{number}", "qty": 1}))
        await finished(client, run_ids[-1])

    response = await client.get(f"{PREFIX}/runs", params={"limit": 2})
    assert response.status_code == 200
    runs = response.json()["runs"]
    assert [run["id"] for run in runs] == [run_ids[2], run_ids[1]]
    assert all(run["status"] == "succeeded" and run["tasks"] for run in runs)

    everything = (await client.get(f"{PREFIX}/runs")).json()["runs"]
    assert [run["id"] for run in everything] == run_ids[::-1]


@pytest.mark.anyio
@pytest.mark.parametrize("limit", ["0", "-1", "many", "", "1001"])
async def test_recent_runs_rejects_a_bad_limit(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get(f"{PREFIX}/runs", params={"limit": limit})
    assert response.status_code == 400
    assert response.json()["field"] == "limit"
    assert "limit" in response.json()["error"]


@pytest.mark.anyio
async def test_events_start_the_subscribed_workflows(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{PREFIX}/events/signup", json={"values": {"name": "new-user", "qty": 0}}
    )
    assert response.status_code == 202
    run_ids = response.json()["run_ids"]
    assert len(run_ids) == 1
    run = await finished(client, run_ids[0])
    assert run["workflow"] == "on_signup"
    assert run["status"] == "succeeded"
    assert run["context"] == {"values": {"name": "new-user", "qty": 0}}
    assert run["tasks"]["write"]["state"] == "succeeded"

    nobody = await client.post(f"{PREFIX}/events/unheard-of", content=b"")
    assert nobody.status_code == 202
    assert nobody.json() == {"run_ids": []}


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"{broken"])
async def test_event_payload_must_be_a_json_object(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(f"{PREFIX}/events/signup", content=body)
    assert response.status_code == 400
    assert "JSON object" in response.json()["error"]


@pytest.mark.anyio
async def test_cancel_a_running_run(client: httpx.AsyncClient, probe: Probe) -> None:
    run_id = await start(client, "slow", label="to-cancel")
    await probe.started("to-cancel")

    response = await client.post(f"{PREFIX}/runs/{run_id}/cancel")
    assert response.status_code == 200
    run = await finished(client, run_id)
    assert run["status"] == "cancelled"
    assert run["tasks"]["hang"]["state"] == "cancelled"
    assert run["error"] == "cancelled by request"

    again = await client.post(f"{PREFIX}/runs/{run_id}/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"


@pytest.mark.anyio
async def test_unknown_runs_are_404(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get(f"{PREFIX}/runs/no-such-run"),
        await client.post(f"{PREFIX}/runs/no-such-run/cancel"),
    ):
        assert response.status_code == 404
        assert "no-such-run" in response.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[]", None),
        (b'{"context": {}}', "workflow"),
        (b'{"workflow": 3}', "workflow"),
        (b'{"workflow": "ingest", "context": [1]}', "context"),
        (b'{"workflow": "ingest", "colour": "red"}', "colour"),
    ],
)
async def test_bad_run_requests_are_400_naming_the_field(
    client: httpx.AsyncClient, body: bytes, field: str | None
) -> None:
    response = await client.post(
        f"{PREFIX}/runs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()
    assert error.get("field") == field
    if field is not None:
        assert field in error["error"]


@pytest.mark.anyio
async def test_unknown_workflow_is_404_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{PREFIX}/runs", json={"workflow": "nope"})
    assert response.status_code == 404
    assert response.json()["field"] == "workflow"
    assert "nope" in response.json()["error"]


@pytest.mark.anyio
async def test_bad_priority_header_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{PREFIX}/runs", json={"workflow": "ingest"}, headers={"x-wf78-priority": "urgent"}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "priority"


@pytest.mark.anyio
async def test_overloaded_is_503_with_retry_after(tmp_path: Path, probe: Probe) -> None:
    async with serve(tmp_path, probe, queue_size=1, overload_timeout=0.05) as client:
        holder = await start(client, "slow", label="holder")  # takes the only pending slot
        await probe.started("holder")
        response = await client.post(f"{PREFIX}/runs", json={"workflow": "ingest"})
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]
        await client.post(f"{PREFIX}/runs/{holder}/cancel")


# -- status and metrics ----------------------------------------------------------------


async def traffic(client: httpx.AsyncClient) -> None:
    """Two runs, one event and one koa78 data call (an ``engine.submit``)."""
    for number in range(2):
        run = await finished(client, await start(client, "ingest", values={"name": f"r{number}"}))
        assert run["status"] == "succeeded"
    event = await client.post(f"{PREFIX}/events/signup", json={"values": {"name": "e"}})
    (run_id,) = event.json()["run_ids"]
    assert (await finished(client, run_id))["status"] == "succeeded"
    added = await client.post("/api/demo/Items/mAdd", json={"pars": ["pear", 2]})
    assert added.status_code == 200 and added.json()["res"] == 0, added.text


@pytest.mark.anyio
async def test_status_is_the_engine_stats(client: httpx.AsyncClient) -> None:
    await traffic(client)
    response = await client.get(f"{PREFIX}/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == set(EngineStats.__struct_fields__)
    stats = msgspec.json.decode(response.content, type=EngineStats)
    (source,) = stats.sources
    assert (source.name, source.type, source.healthy) == ("db", "sqlite", True)
    # 2 runs x (write + count) + 1 event write + 1 mAdd
    assert source.ops == 6
    assert stats.submitted == 1 and stats.completed == 1
    assert stats.runs_finished == 3 and stats.runs_active == 0
    workflows = {w.id: w for w in stats.workflows}
    assert workflows["ingest"].max_concurrent == 4
    assert [agent.id for agent in stats.agents] == ["agent-db"]


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(family: Any, name: str | None = None, **labels: str) -> float:
    for found in family.samples:
        if (name is None or found.name == name) and all(
            found.labels.get(k) == v for k, v in labels.items()
        ):
            return float(found.value)
    raise AssertionError(f"no sample {name or family.name} {labels}")


@pytest.mark.anyio
async def test_metrics_in_prometheus_text(client: httpx.AsyncClient) -> None:
    before = families((await client.get(f"{PREFIX}/metrics")).text)
    assert sample(before["wf78_source_ops"], source="db") == 0

    await traffic(client)
    response = await client.get(f"{PREFIX}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    found = families(response.text)

    assert found["wf78_source_ops"].type == "counter"
    assert sample(found["wf78_source_ops"], "wf78_source_ops_total", source="db") == 6
    assert sample(found["wf78_source_errors"], source="db", type="sqlite") == 0
    for name in ("wf78_source_retries", "wf78_source_fallbacks"):
        assert found[name].type == "counter"
    assert sample(found["wf78_submitted"], "wf78_submitted_total") == 1
    assert sample(found["wf78_completed"]) == 1
    assert sample(found["wf78_failed"]) == 0
    assert sample(found["wf78_runs_finished"]) == 3
    assert sample(found["wf78_runs_active"]) == 0

    latency = found["wf78_source_latency_seconds"]
    assert latency.type == "summary"
    p50 = sample(latency, quantile="0.5", source="db")
    p99 = sample(latency, quantile="0.99", source="db")
    assert 0 < p50 <= p99
    assert sample(latency, "wf78_source_latency_seconds_count", source="db") == 6
    assert sample(latency, "wf78_source_latency_seconds_sum", source="db") > 0

    queue = found["wf78_queue_depth"]
    assert queue.type == "gauge"
    assert {s.labels["priority"] for s in queue.samples} == {"1", "2", "3"}
    assert sample(found["wf78_workflow_max_concurrent"], workflow="ingest") == 4
    assert sample(found["wf78_workflow_running"], workflow="ingest") == 0
    assert sample(found["wf78_agent_status"], agent="agent-db", status="idle") == 1
    assert sample(found["wf78_agent_status"], agent="agent-db", status="busy") == 0
    assert sample(found["wf78_agent_load"], agent="agent-db") == 0
    assert sample(found["wf78_agent_completed"], agent="agent-db") == 6

    # Its own registry: nothing from the process-wide one, and nothing added to it.
    assert "python_info" not in found
    assert prometheus_client.REGISTRY.get_sample_value("wf78_submitted_total") is None


@pytest.mark.anyio
async def test_metrics_while_a_run_is_running(client: httpx.AsyncClient, probe: Probe) -> None:
    run_id = await start(client, "slow", label="busy")
    await probe.started("busy")
    found = families((await client.get(f"{PREFIX}/metrics")).text)
    assert sample(found["wf78_workflow_running"], workflow="slow") == 1
    assert sample(found["wf78_runs_active"]) == 1
    assert sample(found["wf78_running"]) == 1
    await client.post(f"{PREFIX}/runs/{run_id}/cancel")


# -- who may call, and the HTTP edges ----------------------------------------------------

ROUTES = [
    ("GET", "/runs"),
    ("POST", "/runs"),
    ("GET", "/runs/some-id"),
    ("POST", "/runs/some-id/cancel"),
    ("POST", "/events/signup"),
    ("GET", "/status"),
    ("GET", "/metrics"),
    ("GET", "/no-such-route"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_an_identity(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(
        method, PREFIX + path, json={"workflow": "ingest"}, headers={"authorization": ""}
    )
    assert response.status_code == 401
    assert "error" in response.json()
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_the_admin_role(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(
        method,
        PREFIX + path,
        json={"workflow": "ingest"},
        headers={"authorization": f"Bearer {USER}"},
    )
    assert response.status_code == 403
    assert "admin" in response.json()["error"]


@pytest.mark.anyio
async def test_the_koa78_sid_header_is_a_bearer_token_too(client: httpx.AsyncClient) -> None:
    for token, status in ((USER, 403), (ADMIN, 200)):
        headers = {"authorization": "", "sid": token}
        assert (await client.get(f"{PREFIX}/status", headers=headers)).status_code == status


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "", "/static/dashboard.js", "/status", "/runs"])
async def test_a_token_in_the_url_is_refused(client: httpx.AsyncClient, path: str) -> None:
    """Access logs keep URLs, query and all: a token there is as good as published."""
    for headers in ({"authorization": ""}, {}):
        response = await client.get(PREFIX + path, params={"token": ADMIN}, headers=headers)
        assert response.status_code == 400, (path, headers)
        body = response.json()
        assert body["field"] == "token" and "#token=" in body["error"]
        assert ADMIN not in response.text


@pytest.mark.anyio
async def test_the_dashboard_page_and_files_load_without_a_token(
    client: httpx.AsyncClient,
) -> None:
    """A browser cannot send the bearer header on a page load: the page and its files are
    static and hold no data; the scripts send the token to the JSON routes, which need it."""
    anonymous = {"authorization": ""}
    for path in ("/", "", "/static/dashboard.js", "/static/dashboard.css"):
        assert (await client.get(PREFIX + path, headers=anonymous)).status_code == 200, path
    assert (await client.get(f"{PREFIX}/static/nope.js", headers=anonymous)).status_code == 404
    for path in ("/status", "/runs", "/metrics", "/openapi.json"):
        assert (await client.get(PREFIX + path, headers=anonymous)).status_code == 401, path


@pytest.mark.anyio
async def test_unknown_paths_are_404(client: httpx.AsyncClient) -> None:
    for path in ("/nope", "/runs/a/b/c", "/static/missing.js", "/static/index.html"):
        response = await client.get(PREFIX + path)
        assert response.status_code == 404, path
        assert "error" in response.json()
    # Outside the prefix, the app answers.
    assert (await client.get("/")).text == "the app"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/runs", "GET, HEAD, POST"),
        ("PUT", "/runs/some-id", "GET, HEAD"),
        ("GET", "/runs/some-id/cancel", "POST"),
        ("GET", "/events/signup", "POST"),
        ("POST", "/status", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
    ],
)
async def test_wrong_methods_are_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, PREFIX + path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert method in response.json()["error"]


@pytest.mark.anyio
async def test_head_answers_headers_only(client: httpx.AsyncClient) -> None:
    response = await client.head(f"{PREFIX}/status")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


@pytest.mark.anyio
async def test_bodies_over_the_limit_are_413(tmp_path: Path, probe: Probe) -> None:
    async with serve(tmp_path, probe, max_body=256) as client:
        big = {"workflow": "ingest", "context": {"blob": "x" * 1000}}
        response = await client.post(f"{PREFIX}/runs", json=big)
        assert response.status_code == 413
        assert "256" in response.json()["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as read
            for _ in range(10):
                yield b"x" * 100

        streamed = await client.post(f"{PREFIX}/events/signup", content=chunks())
        assert streamed.status_code == 413
        small = await client.post(f"{PREFIX}/runs", json={"workflow": "ingest"})
        assert small.status_code == 202


# -- the dashboard files -----------------------------------------------------------------


@pytest.mark.anyio
async def test_dashboard_page_and_assets(client: httpx.AsyncClient) -> None:
    page = await client.get(f"{PREFIX}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert f'data-prefix="{PREFIX}"' in html
    assert f'src="{PREFIX}/static/dashboard.js"' in html
    assert f'href="{PREFIX}/static/dashboard.css"' in html
    for panel in ("summary", "queues", "workflows", "agents", "sources", "runs", "dead-letters"):
        assert f'id="{panel}"' in html
    assert "{{" not in html and "token=" not in html

    script = await client.get(f"{PREFIX}/static/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    # The token comes from the URL's fragment (never sent to the server), goes to this
    # tab's sessionStorage and into a bearer header; the fragment leaves the address bar.
    for part in ("location.hash", "sessionStorage", "Authorization", "history.replaceState"):
        assert part in script.text, part
    assert "location.search" not in script.text
    style = await client.get(f"{PREFIX}/static/dashboard.css")
    assert style.headers["content-type"] == "text/css; charset=utf-8"


@pytest.mark.anyio
async def test_a_browser_without_a_token_gets_the_page_with_its_login_form(
    client: httpx.AsyncClient,
) -> None:
    browser = {"authorization": "", "accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = await client.get(f"{PREFIX}/", headers=browser)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    # The form is the page's (its script shows it and keeps the token); were the script
    # not to run, it posts: the token would never be in a URL.
    form = response.text.split('<form id="login"', 1)[1].split("</form>", 1)[0]
    assert 'name="token"' in form and 'type="password"' in form and 'method="post"' in form
    # API routes stay JSON for browsers too.
    api = await client.get(f"{PREFIX}/status", headers=browser)
    assert api.status_code == 401
    assert api.headers["content-type"] == "application/json"
