"""The configuration's msgspec structs: one per section, each checking its own values."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import msgspec

from wf78_core.config.rules import IDENTIFIER, positive, priority_problem
from wf78_core.definitions import Kind, WorkflowDefinition
from wf78_core.ids import NODE_IDS, IdKind

__all__ = [
    "BASE_COLUMNS",
    "LIMIT_KEY_FIELDS",
    "AgentConfig",
    "AgentsConfig",
    "AnswerMode",
    "AuthConfig",
    "ColumnType",
    "Config",
    "DataSourceConfig",
    "EngineSettings",
    "HttpConfig",
    "Identity",
    "LimitConfig",
    "ShardingConfig",
    "TableConfig",
]

ColumnType = Literal["text", "int", "float", "bool", "json", "datetime"]
# How the data routes answer (``[http] answers``): REST statuses, or koa78-base78's answers.
AnswerMode = Literal["rest", "koa78"]
# Columns every table has besides the declared ones (the koa78 base columns).
BASE_COLUMNS: dict[str, ColumnType] = {"id": "text", "upby": "text", "uptime": "datetime"}

_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class EngineSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[engine]``: queueing, limits, retry and shutdown behaviour."""

    # Where workflow runs queue: "memory" (this process) or "redis" (Redis Streams shared
    # by every process naming the same backend_url and backend_namespace; see
    # wf78_core.cluster.streams).
    backend: Literal["memory", "redis"] = "memory"
    backend_url: str = "redis://127.0.0.1:6379/0"
    # The hash tag of every key: one namespace lives in one Redis Cluster slot.
    backend_namespace: str = "wf78"
    # Whether this process runs tasks from the redis backend (false: it only queues runs).
    consume: bool = True
    # Tasks one process takes from the redis backend at once.
    worker_slots: int = 100
    # A worker's heartbeat and the leases it holds expire after lease_ttl without renewal.
    lease_ttl: float = 10.0
    # Entries idle this long past their task's time budget are taken over (XAUTOCLAIM).
    claim_margin: float = 5.0
    # An entry delivered more often than this is a poison entry: a dead letter.
    max_deliveries: int = 5
    # Seconds a finished run's state and results stay in Redis.
    run_ttl: float = 86_400.0
    # Operations accepted but not finished (queued + running); the bound on memory.
    queue_size: int = 100_000
    # How long submit/run wait for queue space before raising Overloaded.
    overload_timeout: float = 1.0
    # Tasks running at once across the whole engine.
    max_running: int = 10_000
    # Every aging_seconds a waiting task counts one priority level more urgent (0 = off).
    aging_seconds: float = 5.0
    event_queue_size: int = 1024
    drain_timeout: float = 30.0
    retry_backoff: float = 0.05
    retry_backoff_max: float = 5.0
    default_timeout: float | None = 30.0
    submit_priority: int = 1
    # Finished runs kept for get_run().
    run_history: int = 1000
    # Where accepted runs and task checkpoints are kept (wf78_core.persistence.journal):
    # "sqlite:///path" (relative to the configuration's folder), "memory", "off" or
    # "package.module:Class".
    journal: str = "sqlite:///wf78-journal.db"
    # Seconds an idempotency key is kept: a run's or an event's (in the journal or Redis),
    # and a data write's in a SQL source's key table; maintenance purges older ones.
    idempotency_ttl: float = 86_400.0
    # Plugin modules every engine built from this configuration registers (importable
    # names such as "myproject.actions"), besides the wf78 entry points.
    plugins: tuple[str, ...] = ()
    # Identical reads in flight at the same moment (same table, filters, owner, columns,
    # order, page) run once, each caller getting its own copy (wf78_core.core.sharing).
    shared_reads: bool = True
    # This process's snowflake node id (0-1023), unique among every process writing the
    # same tables; unset: leased in Redis with the redis backend, else a random one.
    node_id: Annotated[int, msgspec.Meta(ge=0, le=NODE_IDS - 1)] | None = None
    # Fair shares between tenants inside one priority level: the identity field naming the
    # tenant ("cid" or "uid"), "" = off; unset = "cid" when some table has an owner
    # (wf78_core.core.fairness).
    fair_by: Literal["cid", "uid", ""] | None = None
    # Turns in a row per tenant ([engine.fair_weights] acme = 3); others have 1.
    fair_weights: dict[str, Annotated[int, msgspec.Meta(ge=1, le=1000)]] = {}

    def __post_init__(self) -> None:
        for name in (
            "queue_size",
            "max_running",
            "event_queue_size",
            "run_history",
            "worker_slots",
            "max_deliveries",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in (
            "overload_timeout",
            "aging_seconds",
            "drain_timeout",
            "retry_backoff",
            "retry_backoff_max",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0 and finite, got {value}")
        for name in ("lease_ttl", "run_ttl", "idempotency_ttl"):
            if not positive(getattr(self, name)):
                raise ValueError(f"{name} must be positive and finite, got {getattr(self, name)}")
        if not math.isfinite(self.claim_margin) or self.claim_margin < 0:
            raise ValueError(f"claim_margin must be >= 0 and finite, got {self.claim_margin}")
        if not _NAMESPACE.fullmatch(self.backend_namespace):
            raise ValueError(
                "backend_namespace must be 1 to 64 letters, digits, '_', '-', '.' or ':', "
                f"got {self.backend_namespace!r}"
            )
        if not self.backend_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"backend_url must be a redis://, rediss:// or unix:// URL, got {self.backend_url!r}"
            )
        problem = priority_problem(self.submit_priority)
        if problem:
            raise ValueError(f"submit_priority {problem}")
        if self.default_timeout is not None and not positive(self.default_timeout):
            raise ValueError(
                f"default_timeout must be positive and finite, got {self.default_timeout}"
            )


class DataSourceConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[datasources.<name>]``: ``type``, ``url`` and the options of that type."""

    type: str
    url: str | None = None
    # In-flight operations the source takes at once (the default agent's concurrency).
    pool_size: int | None = None
    timeout: float | None = None
    # True: the engine does not start without it. False: a source that cannot open at start
    # is logged and kept out of rotation until its health check passes.
    required: bool = False
    options: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        if self.timeout is not None and not positive(self.timeout):
            raise ValueError(f"timeout must be positive and finite, got {self.timeout}")


class AgentConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One ``[[agents.pool]]`` entry."""

    id: str
    capabilities: tuple[str, ...]
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")


class AgentsConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[agents]``: the allocator, health checking, and optional explicit agents."""

    allocator: str = "least_load"
    health_interval: float = 5.0
    pool: tuple[AgentConfig, ...] = ()

    def __post_init__(self) -> None:
        if not positive(self.health_interval):
            raise ValueError(
                f"health_interval must be positive and finite, got {self.health_interval}"
            )


class ShardingConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``sharding``: one physical table per UTC day or month (``<table>_YYYYMMDD`` /
    ``<table>_YYYYMM``); maintenance keeps ``ahead`` future shards and drops those whose
    period ended more than ``retention_days`` days ago."""

    type: Literal["daily", "monthly"]
    retention_days: int = 5
    ahead: int = 2

    def __post_init__(self) -> None:
        if self.retention_days < 0:
            raise ValueError("retention_days must be >= 0")
        if self.ahead < 0:
            raise ValueError("ahead must be >= 0")


class TableConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[tables.<Name>]``: the writable columns and how the table is served."""

    columns: list[str] | dict[str, ColumnType]
    owner: Literal["cid", "uid"] | None = None
    route: str | None = None
    data_source: str | None = None
    kind: Kind | None = None
    sharding: ShardingConfig | None = None
    public_read: bool = False
    # Sources kept in step with this table through the outbox (see wf78_core.data.mirrors).
    search_mirror: str | None = None
    cache_mirror: str | None = None
    # Seconds a row read through the cache mirror stays cached.
    cache_ttl: float = 300.0
    # Row ids: "snowflake" (minted on insert) or "text" (the caller's, 1 to 64 characters
    # of A-Z a-z 0-9 . _ : -, required on insert).
    id: IdKind = "snowflake"

    def __post_init__(self) -> None:
        if not positive(self.cache_ttl):
            raise ValueError(f"cache_ttl must be positive seconds, got {self.cache_ttl}")
        for name in self.columns:
            if not IDENTIFIER.match(name):
                raise ValueError(f"column name {name!r} is not a plain identifier")
            if name in BASE_COLUMNS or name in ("cid", "uid"):
                raise ValueError(f"column {name!r} is a base column and cannot be declared")
        if self.route is not None and not re.fullmatch(r"api\w*/\w+", self.route):
            raise ValueError(f"route {self.route!r} must look like 'apisys/apimicro'")

    def schema(self) -> dict[str, ColumnType]:
        """Every column of the table, base columns included, with its type."""
        declared: dict[str, ColumnType] = (
            dict.fromkeys(self.columns, "text")
            if isinstance(self.columns, list)
            else dict(self.columns)
        )
        out: dict[str, ColumnType] = {"id": "text"}
        out.update(declared)
        if self.owner:
            out[self.owner] = "text"
        out["upby"] = "text"
        out["uptime"] = "datetime"
        return out


class Identity(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Who a request acts as: a ``[auth.tokens.<token>]`` entry or the guest."""

    uid: str = ""
    cid: str = ""
    uname: str = ""
    roles: tuple[str, ...] = ()
    max_priority: int | None = None

    def __post_init__(self) -> None:
        problem = priority_problem(self.max_priority)
        if problem:
            raise ValueError(f"max_priority {problem}")


class AuthConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[auth]``: bearer tokens and the identity of requests without one."""

    tokens: dict[str, Identity] = {}
    guest: Identity | None = None


class HttpConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[http]``: how ``Wf78Middleware`` rides the ASGI server."""

    # The wrapped app's lifespan. "auto": an app that raises on the lifespan scope is
    # logged at WARNING with its traceback and wf78 answers the lifespan for the engine
    # alone (ASGI's rule for an app without lifespan support). "on": such a crash fails the
    # start-up (uvicorn's --lifespan on). "off": the app never sees the lifespan scope.
    lifespan: Literal["auto", "on", "off"] = "auto"
    # What the data routes answer. "rest": the fitting HTTP status, ``res`` = -status.
    # "koa78": koa78-base78's answers for its clients (HTTP 200 with its negative ``res``
    # when nothing matched, its ``kind`` and ``back`` types, local ``uptime``).
    answers: AnswerMode = "rest"
    # Per route prefix ("apisys/apimicro", any case): the answer mode of the tables served
    # under it, over ``answers``.
    answers_by_route: dict[str, AnswerMode] = {}


class LimitConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[limits.<name>]``: a rate and/or a concurrency cap per key on the data routes
    (wf78_core.core.limits)."""

    # Identity field(s) the limit is kept per, comma-separated: "cid", "uid", "cid,table".
    key: str = "cid"
    # Which tables' data routes (default all) and which koa78 methods (default all).
    tables: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    # Sustained requests per second per key, and how many may come at once above it.
    rate: float | None = None
    burst: int | None = None
    # At most this many in flight per key; over it a request waits up to ``wait`` seconds.
    concurrent: int | None = None
    wait: float = 0.5
    # With the redis backend, a Redis outage lets requests through ("open", logged) or
    # answers them 429 ("closed").
    on_backend_error: Literal["open", "closed"] = "open"

    def __post_init__(self) -> None:
        fields = [part.strip() for part in self.key.split(",")]
        for field in fields:
            if field not in LIMIT_KEY_FIELDS:
                raise ValueError(
                    f"key: {field!r} is not an identity field "
                    f"(expected a comma-separated list of {', '.join(LIMIT_KEY_FIELDS)})"
                )
        if len(set(fields)) != len(fields):
            raise ValueError(f"key: {self.key!r} names a field twice")
        if self.rate is None and self.concurrent is None:
            raise ValueError("a limit needs rate or concurrent (or both)")
        if self.rate is not None and not positive(self.rate):
            raise ValueError(f"rate must be positive and finite, got {self.rate}")
        if self.burst is not None:
            if self.rate is None:
                raise ValueError("burst needs a rate")
            if self.burst < 1:
                raise ValueError(f"burst must be >= 1, got {self.burst}")
        if self.concurrent is not None and self.concurrent < 1:
            raise ValueError(f"concurrent must be >= 1, got {self.concurrent}")
        if not math.isfinite(self.wait) or self.wait < 0:
            raise ValueError(f"wait must be >= 0 and finite, got {self.wait}")
        for name in ("tables", "methods"):
            values = getattr(self, name)
            if values is not None and not values:
                raise ValueError(f"{name} is empty: leave it out to mean all")


# The fields a limit's key may name: the identity's company and user, and the table.
LIMIT_KEY_FIELDS = ("cid", "uid", "table")


class Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The whole configuration file."""

    engine: EngineSettings = EngineSettings()
    datasources: dict[str, DataSourceConfig] = {}
    agents: AgentsConfig = AgentsConfig()
    workflows: tuple[WorkflowDefinition, ...] = ()
    tables: dict[str, TableConfig] = {}
    auth: AuthConfig = AuthConfig()
    http: HttpConfig = HttpConfig()
    limits: dict[str, LimitConfig] = {}
