"""``[limits.<name>]`` on their own: GCRA rates, concurrency per key, which requests a limit
covers, the store failing open or closed, counters and configuration errors."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from wf78_core import RateLimited
from wf78_core.config import Identity, parse_config
from wf78_core.config.schema import LimitConfig
from wf78_core.core.limits import Limiter
from wf78_core.errors import BackendUnavailable, ConfigError, Wf78Error

pytestmark = pytest.mark.anyio

ACME = Identity(uid="u1", cid="acme")
ZETA = Identity(uid="u2", cid="zeta")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: FakeClock | None = None, **limits: dict[str, Any]) -> Limiter:
    tables = {name: {"columns": ["a"]} for name in ("items", "orders")}
    config = parse_config({"limits": limits, "tables": tables})
    return Limiter(config.limits, clock=clock or FakeClock())


async def passes(limits: Limiter, identity: Identity | None, table: str = "items") -> bool:
    try:
        admitted = await limits.enter(identity, table, "mAdd")
    except RateLimited:
        return False
    await admitted.leave()
    return True


async def test_a_burst_passes_then_the_rate() -> None:
    clock = FakeClock()
    limits = limiter(clock, api={"rate": 10.0, "burst": 5})
    assert [await passes(limits, ACME) for _ in range(6)] == [True] * 5 + [False]
    with pytest.raises(RateLimited) as refused:
        await limits.enter(ACME, "items", "mAdd")
    assert refused.value.limit == "api"
    assert refused.value.retry_after == pytest.approx(0.1)
    assert refused.value.retryable is True
    assert isinstance(refused.value, Wf78Error)
    assert "'api'" in str(refused.value)
    clock.now += 0.1
    assert await passes(limits, ACME)
    assert not await passes(limits, ACME)


async def test_over_time_at_most_rate_times_time_plus_burst() -> None:
    clock = FakeClock()
    limits = limiter(clock, api={"rate": 50.0, "burst": 20})
    allowed = 0
    for _ in range(1000):  # 10 s at twice the rate
        allowed += await passes(limits, ACME)
        clock.now += 0.01
    assert allowed == pytest.approx(50 * 10 + 20, abs=1)
    stats = limits.stats()[0]
    assert (stats.allowed, stats.limited) == (allowed, 1000 - allowed)


async def test_each_key_has_its_own_rate() -> None:
    limits = limiter(api={"rate": 1.0, "burst": 1}, per_table={"key": "cid,table", "rate": 1.0})
    assert await passes(limits, ACME)
    assert not await passes(limits, ACME)  # api: acme spent
    assert await passes(limits, ZETA)
    assert await passes(limits, None)  # no identity: the key "", one more key
    assert not await passes(limits, None)
    assert [stats.keys for stats in limits.stats()] == [3, 3]  # acme, zeta and ""


async def test_a_limit_covers_only_its_tables_and_methods() -> None:
    limits = limiter(writes={"rate": 1.0, "tables": ["items"], "methods": ["mAdd", "mAddMany"]})
    assert limits.rules_for("items", "mAdd")
    assert not limits.rules_for("items", "get")
    assert not limits.rules_for("orders", "mAdd")
    assert await passes(limits, ACME)
    assert not await passes(limits, ACME)
    assert await passes(limits, ACME, table="orders")


async def test_headers_follow_the_ietf_draft() -> None:
    limits = limiter(api={"rate": 10.0, "burst": 5})
    admitted = await limits.enter(ACME, "items", "mAdd")
    assert dict(admitted.headers) == {
        b"ratelimit-policy": b'"api";q=5;w=1',
        b"ratelimit": b'"api";r=4;t=1',
    }
    for _ in range(4):
        await limits.enter(ACME, "items", "mAdd")
    with pytest.raises(RateLimited) as refused:
        await limits.enter(ACME, "items", "mAdd")
    assert refused.value.policy == '"api";q=5;w=1'
    assert refused.value.state == '"api";r=0;t=1'


async def test_concurrent_requests_wait_for_a_slot_then_are_refused() -> None:
    limits = limiter(slots={"concurrent": 2, "wait": 0.2})
    first = await limits.enter(ACME, "items", "get")
    second = await limits.enter(ACME, "items", "get")
    assert limits.stats()[0].in_flight == 2
    assert await passes(limits, ZETA)  # another key has its own slots
    got: list[str] = []

    async def third() -> None:
        admitted = await limits.enter(ACME, "items", "get")
        got.append("third")
        await admitted.leave()

    async with anyio.create_task_group() as group:
        group.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert got == []  # waiting for a slot of acme
        await first.leave()  # the slot passes straight to the waiter
    assert got == ["third"]
    with pytest.raises(RateLimited, match="concurrency limit 'slots'") as refused:
        await limits.enter(ACME, "items", "get")  # second still holds one, third gave its back
        await limits.enter(ACME, "items", "get")
    assert refused.value.retry_after == 1.0
    await second.leave()
    stats = limits.stats()[0]
    assert stats.limited == 1
    assert stats.in_flight == 1  # the one the with-block entered before it was refused


async def test_stale_keys_are_swept() -> None:
    clock = FakeClock()
    limits = limiter(clock, api={"rate": 100.0, "burst": 1})
    for index in range(3000):
        await passes(limits, Identity(cid=f"c{index}"))
        clock.now += 0.01
    rule = limits.rules[0]
    assert len(rule._tat) < 2100  # swept as it grew, not one entry per key ever seen  # noqa: SLF001
    assert limits.stats()[0].keys <= 1


class FailingStore:
    """Fault injection: a store that cannot be reached."""

    async def rate(self, limit: str, key: str, interval: float, tolerance: float) -> float:
        raise BackendUnavailable("redis is down")

    async def take(self, limit: str, key: str, capacity: int, lease: str) -> bool:
        raise BackendUnavailable("redis is down")

    async def give(self, limit: str, key: str, lease: str) -> None:
        raise BackendUnavailable("redis is down")

    async def close(self) -> None:
        pass


async def test_a_failing_store_fails_open_or_closed(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(
        {
            "limits": {
                "soft": {"rate": 1.0, "concurrent": 1},
                "hard": {"rate": 1.0, "on_backend_error": "closed", "tables": ["t"]},
            },
            "tables": {"t": {"columns": ["a"]}},
        }
    )
    limits = Limiter(config.limits, store=FailingStore())
    for _ in range(3):
        assert await passes(limits, ACME, table="other")  # soft only: open
    assert "store failed" in caplog.text
    with pytest.raises(RateLimited, match="'hard' cannot be checked"):
        await limits.enter(ACME, "t", "mAdd")
    soft, hard = limits.stats()
    assert soft.backend_errors >= 3
    assert (hard.backend_errors, hard.limited) == (1, 1)


def test_limit_config_errors_name_their_path() -> None:
    cases = {
        "limits.api: key: 'team'": {"api": {"key": "team", "rate": 1.0}},
        "limits.api: a limit needs rate or concurrent": {"api": {}},
        "limits.api: rate must be positive": {"api": {"rate": 0}},
        "limits.api: burst needs a rate": {"api": {"burst": 3, "concurrent": 1}},
        "limits.api.tables[1]: unknown table 'nope'": {
            "api": {"rate": 1.0, "tables": ["items", "nope"]}
        },
        "limits.api.methods[0]: unknown method 'mFoo'": {"api": {"rate": 1.0, "methods": ["mFoo"]}},
        "limits.api.on_backend_error": {"api": {"rate": 1.0, "on_backend_error": "maybe"}},
        "limits.api.extra: unknown key": {"api": {"rate": 1.0, "extra": 1}},
        "limits: must be a table": [],
    }
    for expected, raw in cases.items():
        with pytest.raises(ConfigError) as error:
            parse_config({"limits": raw, "tables": {"items": {"columns": ["a"]}}})
        assert expected in str(error.value), (expected, str(error.value))


def test_burst_defaults_to_a_second_of_rate() -> None:
    config = LimitConfig(rate=2.5)
    assert Limiter({"api": config}).rules[0].burst == 3
