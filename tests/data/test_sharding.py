"""Sharded tables on real SQLite files and the real MariaDB: shard names, maintenance at
start-up, by the workflow and on demand, writes to today's shard, reads over date ranges."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pymysql
import pytest

from tests import pgutil
from wf78_core import ConfigError, Engine, Identity, InvalidOperation, Operation, Table
from wf78_core.config import MAINTENANCE_WORKFLOW, parse_config, with_maintenance
from wf78_core.data import sharding as sharding_module
from wf78_core.data.sharding import (
    MaintenanceReport,
    id_day,
    id_shards,
    is_expired,
    maintain,
    overlaps,
    parse_suffix,
    shard_of,
    to_date,
    upcoming,
    window,
)
from wf78_core.idempotency import key_id

MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}
ALICE = Identity(uid="u-alice", cid="acme", uname="alice")
BOB = Identity(uid="u-bob", cid="globex", uname="bob")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


class Clock:
    """A settable clock for tables and (monkeypatched) for maintenance."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def set(self, day: date) -> None:
        self.moment = at(day)


# -- shard names and periods ----------------------------------------------------------------------


def test_shard_names_follow_koa78() -> None:
    assert shard_of("daily", date(2025, 1, 5)) == "20250105"
    assert shard_of("monthly", date(2025, 1, 5)) == "202501"
    assert parse_suffix("daily", "20250105") == date(2025, 1, 5)
    assert parse_suffix("monthly", "202501") == date(2025, 1, 1)
    for kind, bad in (("daily", "202501"), ("daily", "20250230"), ("monthly", "202513")):
        assert parse_suffix(kind, bad) is None  # type: ignore[arg-type]


def test_upcoming_shards_cross_month_and_year_ends() -> None:
    assert upcoming("daily", date(2024, 12, 30), 3) == [
        "20241230",
        "20241231",
        "20250101",
        "20250102",
    ]
    assert upcoming("daily", date(2024, 2, 28), 1) == ["20240228", "20240229"]
    assert upcoming("monthly", date(2024, 11, 20), 2) == ["202411", "202412", "202501"]
    assert upcoming("monthly", date(2024, 11, 20), 0) == ["202411"]


def test_expiry_counts_from_the_end_of_a_shards_period() -> None:
    today = date(2025, 2, 2)
    assert not is_expired("daily", "20250128", today, 5)
    assert is_expired("daily", "20250127", today, 5)
    assert not is_expired("daily", "20250202", today, 0)
    assert is_expired("daily", "20250201", today, 0)
    # January ends on the 31st: with 5 days' retention it stays until Feb 5 inclusive.
    assert not is_expired("monthly", "202501", date(2025, 2, 5), 5)
    assert is_expired("monthly", "202501", date(2025, 2, 6), 5)
    assert not is_expired("daily", "2025", today, 0)  # not a shard name: never dropped


def test_range_overlap_and_dates() -> None:
    assert overlaps("monthly", "202501", date(2025, 1, 31), date(2025, 2, 3))
    assert not overlaps("monthly", "202501", date(2025, 2, 1), None)
    assert not overlaps("daily", "20250203", None, date(2025, 2, 2))
    assert overlaps("daily", "20250203", None, None)
    assert to_date("2025-01-30") == date(2025, 1, 30)
    assert to_date(datetime(2025, 1, 30, 23, tzinfo=UTC) + timedelta(hours=2)) == date(2025, 1, 31)
    with pytest.raises(InvalidOperation, match="since must be a date"):
        to_date("last tuesday", "since")


# -- configuration ---------------------------------------------------------------------------


def test_a_sharded_table_brings_the_maintenance_workflow() -> None:
    plain = parse_config({"workflows": [{"id": "w", "tasks": [{"id": "x", "action": "noop"}]}]})
    assert with_maintenance(plain) is plain  # no table: no shards, no keys to purge
    declared = parse_config({"tables": {"t": {"columns": ["a"]}}})
    assert with_maintenance(declared).workflows == (MAINTENANCE_WORKFLOW,)
    sharded = parse_config({"tables": {"t": {"columns": ["a"], "sharding": {"type": "daily"}}}})
    (workflow,) = with_maintenance(sharded).workflows
    assert workflow is MAINTENANCE_WORKFLOW
    assert workflow.trigger == "schedule" and workflow.schedule == "5 * * * *"
    assert [task.action for task in workflow.tasks] == ["tables.maintain"]
    own = {"id": "wf78.maintenance", "trigger": "api", "tasks": [{"id": "x", "action": "noop"}]}
    mine = parse_config({**sharded_raw(), "workflows": [own]})
    assert with_maintenance(mine).workflows == mine.workflows  # the configured one is kept
    assert Engine(sharded).workflows["wf78.maintenance"] == MAINTENANCE_WORKFLOW


def sharded_raw() -> dict[str, Any]:
    return {"tables": {"t": {"columns": ["a"], "sharding": {"type": "daily"}}}}


@pytest.mark.parametrize(
    ("sharding", "name", "path", "words"),
    [
        ({"type": "daily", "retention_days": -1}, "t", "tables.t", "retention_days must be >= 0"),
        ({"type": "monthly", "ahead": -2}, "t", "tables.t", "ahead must be >= 0"),
        ({"type": "weekly"}, "t", "tables.t.sharding.type", "Invalid enum value"),
        ({"type": "daily"}, "x" * 56, "tables." + "x" * 56, "at most 55 characters"),
    ],
)
def test_bad_sharding_is_reported(
    sharding: dict[str, Any], name: str, path: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"tables": {name: {"columns": ["a"], "sharding": sharding}}})
    assert any(p.path.startswith(path) and words in p.message for p in caught.value.problems), (
        caught.value.problems
    )


def test_operation_shards_are_digits_only() -> None:
    assert Operation(action="get", shard="20250130").shard == "20250130"
    for bad in ("2025_01", "1; DROP TABLE x", "", "1" * 15):
        with pytest.raises(ValueError, match="shard must be 1 to 14 digits"):
            Operation(action="get", shard=bad)


# -- on the databases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    backend: str
    prefix: str
    path: Path

    @property
    def logs(self) -> str:
        return f"{self.prefix}logs"

    @property
    def monthly(self) -> str:
        return f"{self.prefix}monthly"

    @property
    def plain(self) -> str:
        return f"{self.prefix}plain"

    def config(self, **source_options: Any) -> dict[str, Any]:
        if self.backend == "sqlite":
            source: dict[str, Any] = {"type": "sqlite", "url": f"sqlite:///{self.path}"}
        elif self.backend == "postgres":
            source = {"type": "postgres", "url": pgutil.PG_URL, "maxsize": 4}
        else:
            source = {"type": "mysql", "url": MYSQL_URL, "maxsize": 4}
        source.update(source_options)
        return {
            "engine": {"drain_timeout": 2.0},
            "datasources": {"db": source},
            "tables": {
                self.logs: {
                    "columns": {"message": "text", "n": "int"},
                    "owner": "cid",
                    "data_source": "db",
                    "sharding": {"type": "daily", "retention_days": 2, "ahead": 2},
                },
                self.monthly: {
                    "columns": {"message": "text", "n": "int"},
                    "owner": "cid",
                    "sharding": {"type": "monthly", "retention_days": 40, "ahead": 1},
                },
                self.plain: {"columns": ["message"]},
            },
        }

    def tables(self) -> list[str]:
        """This test's physical tables, from the database itself."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as connection:
                rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                return sorted(row[0] for row in rows if row[0].startswith(self.prefix))
        if self.backend == "postgres":
            # The tables holding rows: plain ones and partitions (not a partitioned parent).
            found = pgutil.fetch(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE $1 "
                "AND relnamespace = current_schema()::regnamespace",
                self.prefix.replace("_", "\\_") + "%",
            )
            return sorted(str(row[0]) for row in found)
        connection = pymysql.connect(**MYSQL)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() AND table_name LIKE %s",
                    [self.prefix.replace("_", "\\_") + "%"],
                )
                return sorted(row[0] for row in cursor.fetchall())
        finally:
            connection.close()

    def shards(self, table: str) -> list[str]:
        names = (name.removeprefix(table + "_") for name in self.tables())
        return [suffix for suffix in names if suffix.isdigit()]

    def execute(self, *statements: str) -> None:
        """Raw SQL on the database, outside wf78 (``{q}`` quotes identifiers)."""
        quote = "`" if self.backend == "mysql" else '"'
        if self.backend == "postgres":
            for sql in statements:
                pgutil.fetch(sql.replace("{q}", quote))
            return
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as lite:
                for sql in statements:
                    lite.execute(sql.replace("{q}", quote))
            return
        connection = pymysql.connect(**MYSQL, autocommit=True)
        try:
            with connection.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql.replace("{q}", quote))
        finally:
            connection.close()


@pytest.fixture(params=["sqlite", "mysql", "postgres"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    made = Setup(request.param, f"s{uuid4().hex[:8]}_", tmp_path / "shards.db")
    yield made
    if made.backend == "postgres":
        pgutil.drop_like(made.prefix)
    if made.backend == "mysql":
        connection = pymysql.connect(**MYSQL)
        try:
            with connection.cursor() as cursor:
                for table in made.tables():
                    cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
        finally:
            connection.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Maintenance and tables read this clock; it starts on 30 January 2025."""
    made = Clock(at(date(2025, 1, 30)))
    monkeypatch.setattr(sharding_module, "now", made)
    return made


@asynccontextmanager
async def started(setup: Setup, **source_options: Any) -> AsyncIterator[Engine]:
    async with Engine(setup.config(**source_options)) as engine:
        yield engine


async def submit(engine: Engine, action: str, table: str, **fields: Any) -> Any:
    op = Operation(action=action, table=table, data_source="db", **fields)
    return (await engine.submit(op)).value


@pytest.mark.anyio
async def test_startup_creates_todays_and_upcoming_shards(setup: Setup, clock: Clock) -> None:
    async with started(setup) as engine:
        assert await submit(engine, "list_shards", setup.logs) == [
            "20250130",
            "20250131",
            "20250201",
        ]
        assert await submit(engine, "list_shards", setup.monthly) == ["202501", "202502"]
        report = engine.startup_maintenance
        assert report is not None
        assert [change.table for change in report.created] == [
            f"{setup.logs}_20250130",
            f"{setup.logs}_20250131",
            f"{setup.logs}_20250201",
            f"{setup.monthly}_202501",
            f"{setup.monthly}_202502",
        ]
        assert {change.source for change in report.created} == {"db"}
        assert engine.workflows["wf78.maintenance"].trigger == "schedule"
    assert setup.shards(setup.logs) == ["20250130", "20250131", "20250201"]


@pytest.mark.anyio
async def test_writes_land_in_todays_shard(setup: Setup, clock: Clock) -> None:
    async with started(setup) as engine:
        logs = Table(engine, setup.logs, identity=ALICE, clock=clock)
        row_id = await logs.add({"message": "hello", "n": 1})
        (row,) = await submit(engine, "get", setup.logs, shard="20250130")
        assert row["id"] == row_id and row["cid"] == "acme" and row["upby"] == "alice"
        assert await submit(engine, "get", setup.logs, shard="20250131") == []
        clock.set(date(2025, 1, 31))
        assert await logs.add_many([{"message": "next day", "n": 2}])
        assert [
            r["message"] for r in await submit(engine, "get", setup.logs, shard="20250131")
        ] == ["next day"]
        # Without a range a read is today's shard; a write by id finds the row's own.
        assert [r["n"] for r in await logs.get()] == [2]
        assert await logs.update(row_id, {"n": 5}) == 1
        clock.set(date(2025, 1, 30))
        assert [r["n"] for r in await logs.get()] == [5]


@pytest.mark.anyio
async def test_maintenance_drops_expired_shards_and_keeps_others(
    setup: Setup, clock: Clock
) -> None:
    async with started(setup) as engine:
        for suffix in ("20250126", "20250127", "20250128", "20250129"):
            assert await submit(engine, "create_table", setup.logs, shard=suffix) is True
        assert await submit(engine, "create_table", setup.logs, shard="20250129") is False
        clock.set(date(2025, 2, 1))  # retention 2 days: keep Jan 30 on
        run = await engine.run("wf78.maintenance")
        assert run.status == "succeeded", run.error
        result = run.tasks["maintain"].result
        assert [change["table"] for change in result["dropped"]] == [
            f"{setup.logs}_{suffix}" for suffix in ("20250126", "20250127", "20250128", "20250129")
        ]
        assert [change["table"] for change in result["created"]] == [
            f"{setup.logs}_20250202",
            f"{setup.logs}_20250203",
            f"{setup.monthly}_202503",
        ]
        assert await submit(engine, "drop_table", setup.logs, shard="20250126") is False
        with pytest.raises(InvalidOperation, match="drop_table drops shards only"):
            await submit(engine, "drop_table", setup.logs)
    assert setup.shards(setup.logs) == [
        "20250130",
        "20250131",
        "20250201",
        "20250202",
        "20250203",
    ]


@pytest.mark.anyio
async def test_maintain_creates_missing_plain_tables_when_asked(setup: Setup, clock: Clock) -> None:
    async with started(setup, create_tables=False) as engine:
        assert setup.plain not in setup.tables()
        report = await maintain(engine)
        assert report.tables_created == [] and len(report.created) == 5  # the shards only
        report = await maintain(engine, create_tables=True)
        # Sharded tables live in their shards: only the plain table is created.
        assert [(c.source, c.table) for c in report.tables_created] == [("db", setup.plain)]
        assert (await maintain(engine, create_tables=True)).tables_created == []
        await Table(engine, setup.plain).add({"message": "works"})
    assert setup.plain in setup.tables()


@pytest.mark.anyio
async def test_daily_reads_across_a_month_boundary_merge_in_order(
    setup: Setup, clock: Clock
) -> None:
    clock.set(date(2025, 1, 29))
    async with started(setup) as engine:
        # Start-up made Jan 29 to 31; February's days are made as maintenance would.
        for suffix in ("20250201", "20250202"):
            assert await submit(engine, "create_table", setup.logs, shard=suffix)
        logs = Table(engine, setup.logs, identity=ALICE, clock=clock)
        bobs = Table(engine, setup.logs, identity=BOB, clock=clock)
        days = [date(2025, 1, 30), date(2025, 1, 31), date(2025, 2, 1), date(2025, 2, 2)]
        # Three rows a day; the order key interleaves across days, so the merge must sort.
        written = [((n * 7) % 13, f"{days[(n - 1) // 3]:%m%d}") for n in range(1, 13)]
        for key, message in written:
            clock.set(datetime.strptime(f"2025{message}", "%Y%m%d").date())
            await logs.add({"message": message, "n": key})
            await bobs.add({"message": "bob", "n": 100})
        clock.set(date(2025, 2, 2))
        rows, total = await logs.get(since="2025-01-30", until="2025-02-02", order="n", total=True)
        assert [(row["n"], row["message"]) for row in rows] == sorted(written)
        assert total == 12
        page = await logs.get(
            since=date(2025, 1, 30),
            until=date(2025, 2, 2),
            order="-n",
            cols="message",
            start=2,
            number=4,
        )
        descending = sorted(written, reverse=True)
        assert page == [{"message": message} for _, message in descending[2:6]]
        # Only the shards in range; without an order, in shard order.
        february = await logs.get(since="2025-02-01", number=100)
        assert [row["message"] for row in february] == ["0201"] * 3 + ["0202"] * 3
        assert [row["message"] for row in await logs.get(until="2025-01-30")] == ["0130"] * 3
        # Bob's rows sit in the same shards and never show up for alice, nor hers for him.
        assert {row["message"] for row in await bobs.get(since="2025-01-01")} == {"bob"}
        assert len(await logs.get()) == 3  # today's shard only
        with pytest.raises(InvalidOperation, match=r"since .* is after until"):
            await logs.get(since="2025-02-02", until="2025-01-30")
        with pytest.raises(InvalidOperation, match="not sharded"):
            await Table(engine, setup.plain).get(since="2025-01-30")


@pytest.mark.anyio
async def test_monthly_reads_across_months(setup: Setup, clock: Clock) -> None:
    clock.set(date(2024, 12, 20))
    async with started(setup) as engine:
        await maintain(engine, today=date(2024, 12, 20), tables=[setup.monthly])
        monthly = Table(engine, setup.monthly, identity=ALICE, clock=clock)
        for day, n in ((date(2024, 12, 20), 2), (date(2025, 1, 5), 1), (date(2025, 1, 31), 3)):
            clock.set(day)
            await monthly.add({"message": f"{day:%Y%m%d}", "n": n})
        rows, total = await monthly.get(
            since="2024-12-31", until="2025-01-02", order="-n", total=True
        )
        assert [row["message"] for row in rows] == ["20250131", "20241220", "20250105"]
        assert total == 3
        assert [r["n"] for r in await monthly.get(since="2025-01-01", order="n")] == [1, 3]
        assert await submit(engine, "list_shards", setup.monthly) == ["202412", "202501"]


@pytest.mark.anyio
async def test_a_source_that_cannot_shard_fails_start_up_clearly(clock: Clock, faults: Any) -> None:
    config = {
        "engine": {"drain_timeout": 1.0},
        "datasources": {"flaky": {"type": "faulty"}},
        "tables": {
            "events": {"columns": ["a"], "data_source": "flaky", "sharding": {"type": "daily"}}
        },
    }
    engine = Engine(config, plugins=[faults])
    with pytest.raises(ConfigError) as caught:
        async with engine:
            pass
    (problem,) = caught.value.problems
    assert problem.path == "tables.events.sharding"
    assert "cannot hold the shards" in problem.message and "create_table" in problem.message
    assert faults.sources["flaky"].closed


@pytest.mark.anyio
async def test_the_memory_source_serves_tables_and_shards(clock: Clock) -> None:
    config = {
        "datasources": {"mem": {"type": "memory"}},
        "tables": {
            "events": {
                "columns": {"what": "text", "n": "int"},
                "owner": "cid",
                "sharding": {"type": "daily", "ahead": 1},
            }
        },
    }
    async with Engine(config) as engine:
        report = engine.startup_maintenance
        assert report is not None
        assert [c.table for c in report.created] == ["events_20250130", "events_20250131"]
        events = Table(engine, "events", identity=ALICE, clock=clock)
        first = await events.add({"what": "a", "n": 2})
        assert await events.add_many_by_id([{"id": first, "what": "dup"}, {"id": "x", "n": 1}]) == 1
        assert await Table(engine, "events", identity=BOB).update_many([{"id": first, "n": 9}]) == 0
        assert await events.update_many([{"id": first, "n": 3}]) == 1
        rows, total = await events.get(order="-n", total=True)
        assert [(row["id"], row["n"]) for row in rows] == [(first, 3), ("x", 1)] and total == 2
        clock.set(date(2025, 1, 31))
        await events.add({"what": "b", "n": 2})
        merged = await events.get(since="2025-01-30", order="n", cols="n")
        assert merged == [{"n": 1}, {"n": 2}, {"n": 3}]


# -- tables exist when the engine starts ------------------------------------------------------


@pytest.mark.anyio
async def test_startup_creates_declared_tables_and_shards_on_every_sql_source(
    setup: Setup, clock: Clock
) -> None:
    # Nothing to set, on MySQL as on SQLite: the first request finds its table.
    async with started(setup) as engine:
        assert await Table(engine, setup.plain).add({"message": "works"})
        assert setup.plain in setup.tables()
        assert setup.shards(setup.logs) == ["20250130", "20250131", "20250201"]
        assert setup.shards(setup.monthly) == ["202501", "202502"]


@pytest.mark.anyio
async def test_create_tables_false_creates_nothing_at_start(setup: Setup, clock: Clock) -> None:
    async with started(setup, create_tables=False) as engine:
        assert engine.startup_maintenance == MaintenanceReport()
        assert setup.tables() == []


@pytest.mark.anyio
async def test_a_table_lacking_a_declared_column_stops_the_start_until_migrated(
    setup: Setup, clock: Clock
) -> None:
    # Made by an older declaration: the plain table without "message", a shard without "n".
    datetime_type = {"sqlite": "TEXT", "postgres": "TIMESTAMP"}.get(setup.backend, "DATETIME(6)")
    key = {"sqlite": "TEXT", "postgres": "VARCHAR(255)"}.get(setup.backend, "VARCHAR(64)")
    shard = f"{setup.logs}_20250130"
    setup.execute(
        f"CREATE TABLE {{q}}{setup.plain}{{q}} "
        f"(id {key} PRIMARY KEY, upby TEXT, uptime {datetime_type})",
        f"INSERT INTO {{q}}{setup.plain}{{q}} (id, upby) VALUES ('old', 'someone')",
        f"CREATE TABLE {{q}}{shard}{{q}} (id {key} PRIMARY KEY, message TEXT, cid {key}, "
        f"upby TEXT, uptime {datetime_type})",
    )
    with pytest.raises(ConfigError) as caught:
        async with started(setup):
            pass
    assert [(p.path, p.message) for p in caught.value.problems] == [
        (
            f"tables.{setup.logs}.columns.n",
            f"table {shard!r} on data source 'db' has no column 'n': "
            "run `wf78 maintain --migrate` to add it",
        ),
        (
            f"tables.{setup.plain}.columns.message",
            f"table {setup.plain!r} on data source 'db' has no column 'message': "
            "run `wf78 maintain --migrate` to add it",
        ),
    ]
    # Migrating adds what is missing (additive only: the rows stay), then it starts as usual.
    async with Engine(setup.config(), migrate=True) as engine:
        report = engine.startup_maintenance
        assert report is not None
        assert [(c.source, c.table, c.column) for c in report.columns_added] == [
            ("db", shard, "n"),
            ("db", setup.plain, "message"),
        ]
        assert await Table(engine, setup.plain).get(cols="id,message,upby") == [
            {"id": "old", "message": None, "upby": "someone"}
        ]
    async with started(setup) as engine:
        logs = Table(engine, setup.logs, identity=ALICE, clock=clock)
        await logs.add({"message": "x", "n": 7})
        assert [row["n"] for row in await logs.get()] == [7]
        assert (await maintain(engine, migrate=True)).columns_added == []


# -- by-id writes find the shard of their row ---------------------------------------------------

SNOWFLAKE_EPOCH_MS = 1_600_000_000_000


def minted(moment: datetime, sequence: int = 0) -> str:
    """A snowflake id as one minted at ``moment``."""
    return str(((int(moment.timestamp() * 1000) - SNOWFLAKE_EPOCH_MS) << 22) | sequence)


def test_a_rows_shards_start_from_the_day_its_id_was_minted() -> None:
    today = date(2025, 1, 31)
    jan29 = minted(at(date(2025, 1, 29), 23))
    assert id_day(jan29) == date(2025, 1, 29)
    assert id_day("sku-1") is None
    assert window("daily", today, 2) == ["20250131", "20250130", "20250129"]
    assert window("monthly", date(2025, 3, 2), 40) == ["202503", "202502", "202501"]
    # Its own day, the later ones, then the rest of the window newest first (an id derived
    # from an idempotency key looks like a snowflake and carries no time).
    assert id_shards("daily", jan29, today, 2) == ["20250129", "20250130", "20250131"]
    assert id_shards("daily", jan29, today, 4) == [
        "20250129",
        "20250130",
        "20250131",
        "20250128",
        "20250127",
    ]
    assert id_shards("monthly", jan29, date(2025, 3, 2), 40) == ["202501", "202502", "202503"]
    # Anything else: the whole window, newest first.
    others = ["sku-1", "42", key_id("some key"), minted(at(date(2025, 2, 3)))]
    others.append(minted(at(date(2024, 1, 1))))
    for other in others:
        assert id_shards("daily", other, today, 2) == ["20250131", "20250130", "20250129"]
    assert id_shards("daily", jan29, today, 2, text_id=True) == [
        "20250131",
        "20250130",
        "20250129",
    ]


@pytest.mark.anyio
async def test_updates_and_deletes_by_id_reach_the_shard_of_their_row(
    setup: Setup, clock: Clock
) -> None:
    async with started(setup) as engine:
        logs = Table(engine, setup.logs, identity=ALICE, clock=clock)
        bobs = Table(engine, setup.logs, identity=BOB, clock=clock)
        # January 30th: a row added now (its id carries the real clock's time, not the
        # test's, so its shard is searched for) and three with ids minted that day.
        first = await logs.add({"message": "first", "n": 1})
        b, c, d, e, f = (minted(at(date(2025, 1, 30)), n) for n in (1, 2, 3, 4, 5))
        rows = [{"id": row_id, "message": row_id, "n": 1} for row_id in (b, c, d, e, f)]
        assert await logs.add_many_by_id(rows) == 5
        clock.set(date(2025, 1, 31))
        today = await logs.add({"message": "today", "n": 1})
        assert await logs.update(first, {"n": 2}) == 1
        assert await logs.update_by_id({"id": b, "n": 2}) == 1
        assert await bobs.update(b, {"n": 9}) == 0 and await bobs.delete(c) == 0
        assert await bobs.update_many([{"id": b, "n": 9}, {"id": first, "n": 9}]) == 0
        assert await logs.update_many([{"id": i, "n": 3} for i in (first, b, c, today)]) == 4
        found = await logs.get(since="2025-01-30", cols="id,n", number=100)
        assert {row["id"]: row["n"] for row in found} == {
            first: 3,
            b: 3,
            c: 3,
            d: 1,
            e: 1,
            f: 1,
            today: 3,
        }
        assert await logs.delete(c) == 1 and await logs.delete(c) == 0
        assert await bobs.delete_many([first, b, d]) == 0
        assert await logs.delete_many([first, b, today, "123"]) == 3
        # A replay with the caller's key answers as the first call did, writing nothing.
        many = f"m-{uuid4().hex}"
        assert await logs.delete_many([e, f], idempotency_key=many) == 2
        assert await logs.delete_many([e, f], idempotency_key=many) == 2
        assert [row["id"] for row in await logs.get(since="2025-01-30")] == [d]
        update, delete = f"u-{uuid4().hex}", f"d-{uuid4().hex}"
        assert await logs.update(d, {"n": 5}, idempotency_key=update) == 1
        assert await logs.update(d, {"n": 5}, idempotency_key=update) == 1
        assert [row["n"] for row in await logs.get(since="2025-01-30")] == [5]
        assert await logs.delete(d, idempotency_key=delete) == 1
        assert await logs.delete(d, idempotency_key=delete) == 1
        assert await logs.get(since="2025-01-30") == []
        # upsert (koa78 mByid) updates the row where it is rather than adding a second one.
        again = minted(at(date(2025, 1, 30)), 9)
        clock.set(date(2025, 1, 30))
        await logs.add_many_by_id([{"id": again, "message": "old", "n": 1}])
        clock.set(date(2025, 1, 31))
        assert await logs.upsert({"id": again, "message": "new"}) == again
        found = await logs.get(since="2025-01-30", cols="id,message")
        assert found == [{"id": again, "message": "new"}]


@pytest.mark.anyio
async def test_text_ids_are_looked_for_in_every_shard_of_the_window(clock: Clock) -> None:
    config = {
        "datasources": {"mem": {"type": "memory"}},
        "tables": {
            "events": {
                "columns": {"what": "text", "n": "int"},
                "id": "text",
                "sharding": {"type": "daily", "retention_days": 3, "ahead": 0},
            }
        },
    }
    async with Engine(config) as engine:
        events = Table(engine, "events", clock=clock)
        await events.add({"id": "sku-1", "what": "a", "n": 1})
        clock.set(date(2025, 2, 1))
        await maintain(engine)
        await events.add({"id": "sku-2", "what": "b", "n": 1})
        assert await events.update("sku-1", {"n": 2}) == 1
        assert await events.update_many([{"id": "sku-1", "n": 3}, {"id": "sku-2", "n": 3}]) == 2
        assert await events.delete_many(["sku-1", "sku-2", "sku-3"]) == 2
        assert await events.get(since="2025-01-01") == []
