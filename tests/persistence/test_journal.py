"""The run journal: accepted runs survive a crash, finished tasks are not run again, dead
letters are kept and can be run again. The crash is a real ``kill -9`` of a process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from asgi_lifespan import LifespanManager
from conftest import Probe, make_config

from wf78_core import ConfigError, Engine, UnknownWorkflow, Wf78Error, Wf78Middleware, hookimpl
from wf78_core.persistence.journal import MemoryJournal, SQLiteJournal, open_journal

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def task(id: str, action: str = "probe.record", **fields: Any) -> dict[str, Any]:
    return {"id": id, "action": action, **fields}


def journal_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(sql).fetchall()


def chain_config(journal: Path, **engine: Any) -> dict[str, Any]:
    return make_config(
        {
            "id": "chain",
            "tasks": [
                task("first"),
                task("second", "probe.wait", depends_on=["first"], params={"gate": "second"}),
                task("third", depends_on=["second"]),
            ],
        },
        engine={"journal": f"sqlite:///{journal}", **engine},
    )


async def test_an_accepted_run_is_in_the_journal_before_run_returns(
    tmp_path: Path, probe: Probe
) -> None:
    journal = tmp_path / "journal.db"
    async with Engine(chain_config(journal), plugins=[probe]) as engine:
        run = await engine.run("chain", {"order": 7}, wait=False)
        # Read by another connection, at once: it was committed before run() returned.
        rows = journal_rows(journal, "SELECT id, workflow, context, status FROM wf78_runs")
        assert rows == [(run.id, "chain", '{"order":7}', "running")]
        await probe.started("second")
        await engine.journal.flush()  # type: ignore[union-attr]
        checkpoints = journal_rows(journal, "SELECT task FROM wf78_run_tasks")
        assert checkpoints == [("first",)]
        probe.gate("second").set()
        await probe.finished(engine, run.id)
        await engine.journal.flush()  # type: ignore[union-attr]
    # A finished run keeps only a summary: its task rows are gone.
    assert journal_rows(journal, "SELECT id, status FROM wf78_runs") == [(run.id, "succeeded")]
    assert journal_rows(journal, "SELECT count(*) FROM wf78_run_tasks") == [(0,)]
    # The next start still knows how it ended (a client may hold its id from a 202).
    async with Engine(chain_config(journal), plugins=[Probe()]) as engine:
        assert engine.resumed_runs == 0
        known = engine.get_run(run.id)
        assert known.status == "succeeded" and known.context == {"order": 7}
        assert {t.state for t in known.tasks.values()} == {"succeeded"}


async def test_only_the_newest_finished_runs_keep_a_summary(tmp_path: Path, probe: Probe) -> None:
    journal = tmp_path / "journal.db"
    cfg = make_config(
        {"id": "one", "tasks": [task("t")]},
        engine={"journal": f"sqlite:///{journal}", "run_history": 2},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        ids = [(await engine.run("one")).id for _ in range(45)]
        await engine.journal.flush()  # type: ignore[union-attr]
    kept = {row[0] for row in journal_rows(journal, "SELECT id FROM wf78_runs")}
    # The journal keeps 10 x run_history summaries, pruned every tenth of that many
    # finishes: at most that many past the bound.
    assert set(ids[-20:]) <= kept and len(kept) <= 22
    async with Engine(cfg, plugins=[probe]) as engine:
        assert engine.get_run(ids[-1]).status == "succeeded"
        assert (await engine.fetch_run(ids[-20])).status == "succeeded"  # from the journal
        with pytest.raises(UnknownWorkflow):
            engine.get_run(ids[-3])  # memory holds the newest run_history only
        with pytest.raises(UnknownWorkflow):
            await engine.fetch_run(ids[0])


@pytest.mark.parametrize("journal", ["sqlite", "memory"])
async def test_a_run_evicted_from_memory_is_still_answered_from_the_journal(
    tmp_path: Path, probe: Probe, journal: str
) -> None:
    """Under load a run falls out of the in-memory history (run_history) before its client
    asks: GET {prefix}/runs/{id} and engine.fetch_run answer from the journal, as long as
    the journal keeps its summary."""
    setting = f"sqlite:///{tmp_path / 'journal.db'}" if journal == "sqlite" else "memory"
    cfg = make_config(
        {"id": "one", "tasks": [task("t"), task("u", "probe.fail", depends_on=["t"])]},
        {"id": "ok", "tasks": [task("t")]},
        engine={"journal": setting, "run_history": 5},
        auth={"tokens": {"root": {"uid": "1", "cid": "1", "roles": ["admin"]}}},
    )
    engine = Engine(cfg, plugins=[probe])
    app = Wf78Middleware(_lifespan_only, engine=engine)
    headers = {"Authorization": "Bearer root"}
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        first = await engine.run("one")  # u fails once: a failed run with a dead letter
        assert first.status == "failed"
        ids = [(await engine.run("ok")).id for _ in range(20)]
        await engine.journal.flush()  # type: ignore[union-attr]
        with pytest.raises(UnknownWorkflow):
            engine.get_run(first.id)  # evicted from memory
        old = await engine.fetch_run(first.id)
        assert (old.id, old.workflow, old.status) == (first.id, "one", "failed")
        assert old.error == first.error and old.finished == pytest.approx(first.finished)
        assert old.tasks["t"].state == "succeeded" and old.tasks["u"].state == "failed"
        answer = await client.get(f"/_wf78/runs/{ids[0]}", headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "succeeded"
        assert answer.json()["id"] == ids[0]
        missing = await client.get("/_wf78/runs/nope", headers=headers)
        assert missing.status_code == 404


async def _lifespan_only(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


async def test_a_run_cut_off_by_shutdown_resumes_at_the_next_start(
    tmp_path: Path, probe: Probe
) -> None:
    journal = tmp_path / "journal.db"
    cfg = chain_config(journal, drain_timeout=0.05)
    async with Engine(cfg, plugins=[probe]) as engine:
        run = await engine.run("chain", wait=False)
        await probe.started("second")
    # The shutdown cancelled it; it stays accepted.
    assert journal_rows(journal, "SELECT id, status FROM wf78_runs") == [(run.id, "running")]
    later = Probe()
    later.gate("second").set()
    async with Engine(cfg, plugins=[later]) as engine:
        assert engine.resumed_runs == 1
        await later.finished(engine, run.id)
        resumed = engine.get_run(run.id)
        assert resumed.status == "succeeded"
        assert resumed.tasks["first"].result == "first"  # from the checkpoint
    # "first" finished before the shutdown and was not run again; the others were.
    assert [label for label, _ in later.calls] == ["second", "third"]


async def test_failed_tasks_become_dead_letters_that_survive_a_restart_and_can_be_retried(
    tmp_path: Path, probe: Probe
) -> None:
    journal = tmp_path / "journal.db"
    cfg = make_config(
        {
            "id": "flaky",
            "tasks": [
                task("load"),
                task("store", "probe.fail", depends_on=["load"], params={"times": 3}, retry=1),
                task("report", depends_on=["store"]),
            ],
        },
        engine={"journal": f"sqlite:///{journal}"},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        run = await engine.run("flaky")
        assert run.status == "failed"
        assert run.tasks["report"].state == "skipped"
        [letter] = engine.dead_letters()
        assert (letter.run_id, letter.task, letter.action, letter.attempts) == (
            run.id,
            "store",
            "probe.fail",
            2,
        )
        assert "planned failure 2" in letter.error
        stats = engine.stats()
        assert stats.dead_letter_count == 1 and stats.dead_letters[0].id == letter.id
    again = Probe()
    again.attempts[(run.id, "store")] = 2  # as the first engine left it
    async with Engine(cfg, plugins=[again]) as engine:
        assert [d.id for d in engine.dead_letters()] == [letter.id]
        assert engine.resumed_runs == 0  # a failed run is finished, not resumed
        with pytest.raises(UnknownWorkflow, match="unknown dead letter"):
            await engine.retry_dead_letter("nope")
        retried = await engine.retry_dead_letter(letter.id)
        assert retried.id == run.id
        await again.finished(engine, run.id)
        # A re-driven task gets its retries again: attempt 3 fails, attempt 4 succeeds.
        done = engine.get_run(run.id)
        assert done.status == "succeeded"
        assert done.tasks["store"].result == 4
        assert done.tasks["load"].result == "load"  # kept, not run again
        assert engine.dead_letters() == []
    assert [label for label, _ in again.calls] == ["report"]
    assert journal_rows(journal, "SELECT count(*) FROM wf78_dead_letters") == [(0,)]


async def test_dead_letters_over_http(tmp_path: Path, probe: Probe) -> None:
    cfg = make_config(
        {"id": "bad", "tasks": [task("t", "probe.fail", params={"times": 1})]},
        engine={"journal": "memory"},
        auth={
            "tokens": {
                "root": {"uid": "1", "cid": "c", "uname": "root", "roles": ["admin"]},
                "user": {"uid": "2", "cid": "c", "uname": "user"},
            }
        },
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app is not reached")

    middleware = Wf78Middleware(app, engine=Engine(cfg, plugins=[probe]))
    async with (
        LifespanManager(middleware),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=middleware), base_url="http://test"
        ) as client,
    ):
        admin = {"authorization": "Bearer root"}
        answer = await client.post("/_wf78/runs", json={"workflow": "bad"}, headers=admin)
        run_id = answer.json()["run_id"]
        await probe.finished(middleware.engine, run_id)
        listed = (await client.get("/_wf78/dead-letters", headers=admin)).json()["dead_letters"]
        assert [(d["run_id"], d["task"]) for d in listed] == [(run_id, "t")]
        status = (await client.get("/_wf78/status", headers=admin)).json()
        assert status["dead_letter_count"] == 1
        assert status["dead_letters"][0]["error"].endswith("planned failure 1")
        metrics = (await client.get("/_wf78/metrics", headers=admin)).text
        assert "wf78_dead_letters 1.0" in metrics
        letter = listed[0]["id"]
        user = {"authorization": "Bearer user"}
        assert (
            await client.post(f"/_wf78/dead-letters/{letter}/retry", headers=user)
        ).status_code == 403
        missing = await client.post("/_wf78/dead-letters/nope/retry", headers=admin)
        assert missing.status_code == 404 and missing.json()["field"] == "letter_id"
        redriven = await client.post(f"/_wf78/dead-letters/{letter}/retry", headers=admin)
        assert redriven.status_code == 202
        assert redriven.json() == {"run_id": run_id}
        await probe.finished(middleware.engine, run_id)
        run = (await client.get(f"/_wf78/runs/{run_id}", headers=admin)).json()
        assert run["status"] == "succeeded"
        assert (await client.get("/_wf78/dead-letters", headers=admin)).json() == {
            "dead_letters": []
        }


async def test_a_dead_letter_of_a_run_still_running_waits(tmp_path: Path, probe: Probe) -> None:
    cfg = make_config(
        {
            "id": "two",
            "tasks": [task("bad", "probe.fail"), task("slow", "probe.wait", params={"gate": "g"})],
        },
        engine={"journal": "memory"},
    )
    async with Engine(cfg, plugins=[probe]) as engine:
        run = await engine.run("two", wait=False)
        await probe.until(lambda: len(engine.dead_letters()) == 1)
        letter = engine.dead_letters()[0]
        with pytest.raises(Wf78Error, match="still running"):
            await engine.retry_dead_letter(letter.id)
        probe.gate("g").set()
        await probe.finished(engine, run.id)
        await engine.retry_dead_letter(letter.id)
        await probe.finished(engine, run.id)
        assert engine.get_run(run.id).status == "succeeded"


async def test_checkpoints_are_bounded_and_all_written(tmp_path: Path, probe: Probe) -> None:
    journal = SQLiteJournal(tmp_path / "j.db", max_queued=5, max_batch=3)
    await journal.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(journal.run)
            from wf78_core.persistence.journal import JournaledRun, TaskCheckpoint

            await journal.started(
                JournaledRun(id="r", workflow="w", context={}, priority=1, created=1.0)
            )
            for index in range(50):
                journal.checkpoint("r", TaskCheckpoint(task=f"t{index}", state="succeeded"))
                await journal.room()
                assert journal.queued <= 5 + 1
            await journal.flush()
            [saved] = await journal.unfinished()
            assert sorted(saved.tasks) == sorted(f"t{index}" for index in range(50))
            assert journal.commits >= 50 // 3
            tg.cancel_scope.cancel()
    finally:
        await journal.close()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("sqlite:///", "expected 'sqlite:///path"),
        ("postgres://x", "unknown journal"),
        ("nosuchmodule:Journal", "cannot load journal"),
    ],
)
def test_bad_journal_settings_name_the_key(tmp_path: Path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Engine(make_config(engine={"journal": setting}))
    assert caught.value.problems[0].path == "engine.journal"


def test_journal_settings(tmp_path: Path) -> None:
    assert open_journal("off", tmp_path) is None
    assert isinstance(open_journal("memory", tmp_path), MemoryJournal)
    relative = open_journal("sqlite:///j/journal.db", tmp_path)
    assert isinstance(relative, SQLiteJournal) and relative.path == tmp_path / "j" / "journal.db"
    custom = open_journal("test_journal:FolderJournal", tmp_path)
    assert isinstance(custom, FolderJournal) and custom.folder == tmp_path


class FolderJournal(MemoryJournal):
    """A third-party journal: built with the engine's base directory."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder


# -- kill -9 -----------------------------------------------------------------------------------

_CRASHING = textwrap.dedent(
    """
    import json, sys, anyio
    from wf78_core import Engine, hookimpl

    class Plugin:
        def __init__(self, log):
            self.log = log
            self.blocked = 0

        def note(self, ctx):
            with open(self.log, "a") as out:
                out.write(ctx.task.id + "\\n")
            return ctx.task.id

        async def block(self, ctx):
            self.note(ctx)
            self.blocked += 1
            if self.blocked == 20:
                await self.engine.journal.flush()  # the checkpoints of "a" are on disk
                print("blocked", flush=True)
            await anyio.sleep_forever()

        @hookimpl
        def wf78_register_actions(self, registry):
            registry.add("test.note", self.note)
            registry.add("test.block", self.block)

    async def main():
        config, log = sys.argv[1], sys.argv[2]
        plugin = Plugin(log)
        async with Engine(config, plugins=[plugin]) as engine:
            plugin.engine = engine
            ids = [(await engine.run("crashy", {"n": n}, wait=False)).id for n in range(20)]
            print(json.dumps(ids), flush=True)
            await anyio.sleep_forever()

    anyio.run(main)
    """
)


async def test_runs_in_flight_at_kill_9_finish_after_restart_without_repeating_tasks(
    tmp_path: Path,
) -> None:
    config = tmp_path / "wf78.toml"
    config.write_text(
        textwrap.dedent(
            """
            [engine]
            journal = "sqlite:///journal.db"

            [datasources.mem]
            type = "memory"

            [[workflows]]
            id = "crashy"
            max_concurrent = 100
            tasks = [
              {id = "a", action = "test.note"},
              {id = "b", action = "test.block", depends_on = ["a"]},
              {id = "c", action = "test.note", depends_on = ["b"]},
            ]
            """
        )
    )
    log = tmp_path / "calls.log"
    script = tmp_path / "crashing.py"
    script.write_text(_CRASHING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    process = await anyio.open_process(
        [sys.executable, str(script), str(config), str(log)], env=env, cwd=tmp_path
    )
    try:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(30):
            run_ids = json.loads(await lines.receive_until(b"\n", 1 << 20))
            # Every run is inside "b" now.
            assert await lines.receive_until(b"\n", 100) == b"blocked"
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert log.read_text().count("a\n") == 20

    class Plugin:
        def note(self, ctx: Any) -> str:
            with log.open("a") as out:
                out.write(ctx.task.id + "\n")
            return str(ctx.task.id)

        @hookimpl
        def wf78_register_actions(self, registry: Any) -> None:
            registry.add("test.note", self.note)
            registry.add("test.block", self.note)

    async with Engine(config, plugins=[Plugin()]) as engine:
        assert engine.resumed_runs == 20
        with anyio.fail_after(10):
            for run_id in run_ids:
                resumed = engine.backend.runs.get(run_id)  # type: ignore[attr-defined]
                assert resumed is not None
                await resumed.done.wait()
                assert resumed.status == "succeeded"
    calls = log.read_text().split()
    # "a" ran once per run, before the crash, and not again; "b" ran again, "c" once.
    assert calls.count("a") == 20
    assert calls.count("b") == 40
    assert calls.count("c") == 20
