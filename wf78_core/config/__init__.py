"""Configuration: msgspec structs, TOML/JSON loading, and validation that names every path."""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
from croniter import croniter

from wf78_core.definitions import Kind, TaskDefinition, WorkflowDefinition
from wf78_core.errors import ConfigError, Problem

__all__ = [
    "DEFAULT_CONFIG_TOML",
    "MAINTENANCE_WORKFLOW",
    "AgentConfig",
    "AgentsConfig",
    "AuthConfig",
    "ColumnType",
    "Config",
    "DataSourceConfig",
    "EngineSettings",
    "Identity",
    "ShardingConfig",
    "TableConfig",
    "check_references",
    "collect_config",
    "load_config",
    "parse_config",
    "read_config",
    "with_maintenance",
]

ColumnType = Literal["text", "int", "float", "bool", "json", "datetime"]
# \A and \Z, not ^ and $: "$" also matches before a trailing newline ("items\n").
_IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
# Columns every table has besides the declared ones (the koa78 base columns).
BASE_COLUMNS: dict[str, ColumnType] = {"id": "text", "upby": "text", "uptime": "datetime"}


# Priorities are small integers: the scheduler does float arithmetic on them when aging.
_MAX_PRIORITY = 999_999_999


_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _priority_problem(value: int | None) -> str | None:
    if value is None or -_MAX_PRIORITY <= value <= _MAX_PRIORITY:
        return None
    return f"must be from {-_MAX_PRIORITY} to {_MAX_PRIORITY}"


def _positive(value: float) -> bool:
    """A finite number above zero (TOML and JSON configs can say ``nan`` and ``inf``)."""
    return math.isfinite(value) and value > 0


class EngineSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[engine]``: queueing, limits, retry and shutdown behaviour."""

    # Where workflow runs queue: "memory" (this process) or "redis" (Redis Streams shared
    # by every process naming the same backend_url and backend_namespace; wf78_core.streams).
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
    # Where accepted runs and task checkpoints are kept (wf78_core.journal): "sqlite:///path"
    # (relative to the configuration's folder), "memory", "off" or "package.module:Class".
    journal: str = "sqlite:///wf78-journal.db"

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
        for name in ("lease_ttl", "run_ttl"):
            if not _positive(getattr(self, name)):
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
        problem = _priority_problem(self.submit_priority)
        if problem:
            raise ValueError(f"submit_priority {problem}")
        if self.default_timeout is not None and not _positive(self.default_timeout):
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
    options: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        if self.timeout is not None and not _positive(self.timeout):
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
        if not _positive(self.health_interval):
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
    # Sources kept in step with this table through the outbox (see wf78_core.mirrors).
    search_mirror: str | None = None
    cache_mirror: str | None = None
    # Seconds a row read through the cache mirror stays cached.
    cache_ttl: float = 300.0

    def __post_init__(self) -> None:
        if not _positive(self.cache_ttl):
            raise ValueError(f"cache_ttl must be positive seconds, got {self.cache_ttl}")
        for name in self.columns:
            if not _IDENT.match(name):
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
    uid: str = ""
    cid: str = ""
    uname: str = ""
    roles: tuple[str, ...] = ()
    max_priority: int | None = None

    def __post_init__(self) -> None:
        problem = _priority_problem(self.max_priority)
        if problem:
            raise ValueError(f"max_priority {problem}")


class AuthConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    tokens: dict[str, Identity] = {}
    guest: Identity | None = None


class Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The whole configuration file."""

    engine: EngineSettings = EngineSettings()
    datasources: dict[str, DataSourceConfig] = {}
    agents: AgentsConfig = AgentsConfig()
    workflows: tuple[WorkflowDefinition, ...] = ()
    tables: dict[str, TableConfig] = {}
    auth: AuthConfig = AuthConfig()


DEFAULT_CONFIG_TOML = """\
# The embedded default: one SQLite file and the two workflows of the koa78 note (3.3).
[datasources.default]
type = "sqlite"
url = "sqlite:///./wf78.db"

[tables.logs]
columns = { level = "text", message = "text" }
kind = "log"

[tables.items]
columns = { name = "text", qty = "int", price = "float" }
owner = "cid"
route = "api/demo"

[[workflows]]
id = "high_priority_db_ops"
name = "High-priority database operations"
priority = 0
max_concurrent = 3
trigger = "api"

[[workflows.tasks]]
id = "determine_data_source"
action = "datasource.select"

[[workflows.tasks]]
id = "execute_db_operation"
action = "datasource.execute"
depends_on = ["determine_data_source"]
timeout = 5.0
retry = 2

[[workflows]]
id = "logging_workflow"
name = "Logging"
priority = 2
max_concurrent = 5
trigger = "event"
event = "log"

[[workflows.tasks]]
id = "write_log"
action = "datasource.execute"
data_source = "sqlite"
params = { action = "add", table = "logs" }
timeout = 5.0
retry = 3
"""

# Added by the engine when a table is sharded (unless a workflow of that id is configured):
# creates upcoming shards and drops expired ones every hour, at five past.
MAINTENANCE_WORKFLOW = WorkflowDefinition(
    id="wf78.maintenance",
    name="Sharding maintenance",
    priority=2,
    max_concurrent=1,
    trigger="schedule",
    schedule="5 * * * *",
    tasks=(TaskDefinition(id="maintain", action="tables.maintain", timeout=300.0, retry=2),),
)


def with_maintenance(config: Config) -> Config:
    """``config`` plus :data:`MAINTENANCE_WORKFLOW` when some table is sharded."""
    sharded = any(table.sharding is not None for table in config.tables.values())
    if not sharded or any(w.id == MAINTENANCE_WORKFLOW.id for w in config.workflows):
        return config
    return msgspec.structs.replace(config, workflows=(*config.workflows, MAINTENANCE_WORKFLOW))


_SECTION_TYPES: dict[str, Any] = {
    "engine": EngineSettings,
    "agents": AgentsConfig,
    "auth": AuthConfig,
}
_DATASOURCE_KEYS = frozenset({"type", "url", "pool_size", "timeout"})


def msgspec_problem(prefix: str, error: msgspec.ValidationError) -> Problem:
    message = str(error)
    path = prefix
    if " - at `$" in message:
        message, _, where = message.rpartition(" - at `$")
        path = prefix + where.rstrip("`")
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        path = f"{path}.{field}" if path else field
        message = "unknown key"
    return Problem(path.lstrip("."), message)


def _convert(value: Any, type_: Any, path: str, problems: list[Problem]) -> Any:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as error:
        problems.append(msgspec_problem(path, error))
        return None
    except UnicodeEncodeError:  # a key with a lone surrogate: _not_unicode reported it
        return None


def _shown(name: Any) -> str:
    """A key as a path part: printable even when it holds a lone surrogate."""
    return str(name).encode("utf-8", "backslashreplace").decode("utf-8")


def _not_unicode(raw: Mapping[str, Any]) -> list[Problem]:
    """Every key and string that is not valid Unicode (a lone surrogate, which JSON's
    ``\\ud800`` escapes can make): wf78 could neither store nor print it."""
    problems: list[Problem] = []
    stack: list[tuple[str | None, Any]] = [(None, raw)]  # None: the root
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(Problem(path or "", "is not valid Unicode text (a lone surrogate)"))
        elif isinstance(value, Mapping):
            for key, item in reversed(list(value.items())):
                child = _shown(key) if path is None else f"{path}.{_shown(key)}"
                stack.append((child, item))
                stack.append((child, str(key)))
        elif isinstance(value, list | tuple):
            stack.extend(
                (f"{path or ''}[{index}]", item) for index, item in reversed(list(enumerate(value)))
            )
    return problems


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from decoded TOML/JSON; :class:`ConfigError` lists every problem."""
    config, problems = collect_config(raw)
    if problems:
        raise ConfigError(problems)
    return config


def collect_config(raw: Mapping[str, Any]) -> tuple[Config, list[Problem]]:
    """The parts of ``raw`` that are well formed, and every problem found on the way.

    Cross-field checks run on whatever parsed, so one report names every problem.
    """
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        return Config(), [Problem("", "the configuration must be a table/object")]
    problems.extend(_not_unicode(raw))
    known = {"engine", "datasources", "agents", "workflows", "tables", "auth"}
    for key in raw:
        if key not in known:
            problems.append(Problem(_shown(key), f"unknown key (expected one of {sorted(known)})"))

    sections: dict[str, Any] = {}
    for key, type_ in _SECTION_TYPES.items():
        if key in raw:
            sections[key] = _convert(raw[key], type_, key, problems)

    datasources: dict[str, DataSourceConfig] = {}
    raw_sources = raw.get("datasources", {})
    if not isinstance(raw_sources, Mapping):
        problems.append(Problem("datasources", "must be a table of named sources"))
        raw_sources = {}
    for name, body in raw_sources.items():
        path = f"datasources.{_shown(name)}"
        if not isinstance(body, Mapping):
            problems.append(Problem(path, "must be a table"))
            continue
        common = {k: v for k, v in body.items() if k in _DATASOURCE_KEYS}
        common["options"] = {k: v for k, v in body.items() if k not in _DATASOURCE_KEYS}
        source = _convert(common, DataSourceConfig, path, problems)
        if source is not None:
            datasources[name] = source

    workflows: list[WorkflowDefinition] = []
    raw_workflows = raw.get("workflows", [])
    if not isinstance(raw_workflows, list):
        problems.append(Problem("workflows", "must be an array of tables"))
        raw_workflows = []
    for index, body in enumerate(raw_workflows):
        workflow = _convert(body, WorkflowDefinition, f"workflows[{index}]", problems)
        if workflow is not None:
            workflows.append(workflow)

    tables: dict[str, TableConfig] = {}
    raw_tables = raw.get("tables", {})
    if not isinstance(raw_tables, Mapping):
        problems.append(Problem("tables", "must be a table of named tables"))
        raw_tables = {}
    for name, body in raw_tables.items():
        if not _IDENT.match(str(name)):
            problems.append(
                Problem(f"tables.{_shown(name)}", "table name is not a plain identifier")
            )
            continue
        table = _convert(body, TableConfig, f"tables.{name}", problems)
        if table is not None:
            tables[name] = table

    config = Config(
        datasources=datasources,
        workflows=tuple(workflows),
        tables=tables,
        **{key: value for key, value in sections.items() if value is not None},
    )
    problems.extend(check_definitions(config))
    return config, problems


def check_definitions(config: Config) -> list[Problem]:
    """Cross-field checks that need no plugins: ids, dependencies, cycles, schedules."""
    problems: list[Problem] = []
    seen_workflows: set[str] = set()
    for w_index, workflow in enumerate(config.workflows):
        base = f"workflows[{w_index}]"
        problems.extend(_check_workflow(workflow, base))
        if workflow.id in seen_workflows:
            problems.append(Problem(f"{base}.id", f"duplicate workflow id {workflow.id!r}"))
        seen_workflows.add(workflow.id)
    seen_agents: set[str] = set()
    for a_index, agent in enumerate(config.agents.pool):
        if agent.id in seen_agents:
            problems.append(
                Problem(f"agents.pool[{a_index}].id", f"duplicate agent id {agent.id!r}")
            )
        seen_agents.add(agent.id)
    for name, table in config.tables.items():
        # The table's name is the search mirror's index name, and indexes are lower-case.
        if table.search_mirror is not None and (name != name.lower() or name.startswith("_")):
            problems.append(
                Problem(
                    f"tables.{name}.search_mirror",
                    "the table name is the search index name: it must be lower-case and not "
                    "start with '_'",
                )
            )
        if table.sharding is not None:
            # Shard names (<name>_YYYYMMDD) must fit MySQL's 64-character identifiers.
            longest = 64 - (9 if table.sharding.type == "daily" else 7)
            if len(name) > longest:
                problems.append(
                    Problem(
                        f"tables.{name}",
                        f"a {table.sharding.type} sharded table's name takes at most "
                        f"{longest} characters, so its shard names fit in 64",
                    )
                )
    return problems


def _check_workflow(workflow: WorkflowDefinition, base: str) -> list[Problem]:
    problems: list[Problem] = []
    if not workflow.id:
        problems.append(Problem(f"{base}.id", "must not be empty"))
    if workflow.max_concurrent < 1:
        problems.append(Problem(f"{base}.max_concurrent", "must be >= 1"))
    priority_problem = _priority_problem(workflow.priority)
    if priority_problem:
        problems.append(Problem(f"{base}.priority", priority_problem))
    if not workflow.tasks:
        problems.append(Problem(f"{base}.tasks", "a workflow needs at least one task"))
    if workflow.trigger == "event" and not workflow.event:
        problems.append(Problem(f"{base}.event", "an event-triggered workflow needs `event`"))
    if workflow.trigger == "schedule":
        schedule = workflow.schedule
        if schedule is None:
            problems.append(Problem(f"{base}.schedule", "a scheduled workflow needs `schedule`"))
        elif isinstance(schedule, str):
            if not croniter.is_valid(schedule):
                problems.append(Problem(f"{base}.schedule", f"bad cron string {schedule!r}"))
        elif not _positive(schedule):
            problems.append(
                Problem(
                    f"{base}.schedule",
                    f"interval must be positive and finite seconds, got {schedule}",
                )
            )
    ids: dict[str, int] = {}
    for index, task in enumerate(workflow.tasks):
        path = f"{base}.tasks[{index}]"
        if not task.id:
            problems.append(Problem(f"{path}.id", "must not be empty"))
        if task.id in ids:
            problems.append(Problem(f"{path}.id", f"duplicate task id {task.id!r}"))
        ids.setdefault(task.id, index)
        if task.timeout is not None and not _positive(task.timeout):
            problems.append(
                Problem(f"{path}.timeout", f"must be positive and finite, got {task.timeout}")
            )
        if task.retry < 0:
            problems.append(Problem(f"{path}.retry", f"must be >= 0, got {task.retry}"))
        if not task.auto_select and task.data_source is None:
            problems.append(
                Problem(f"{path}.auto_select", "auto_select = false needs an explicit data_source")
            )
    for index, task in enumerate(workflow.tasks):
        for dep in task.depends_on:
            if dep not in ids:
                problems.append(
                    Problem(f"{base}.tasks[{index}].depends_on", f"unknown task {dep!r}")
                )
            elif dep == task.id:
                problems.append(
                    Problem(f"{base}.tasks[{index}].depends_on", "a task cannot depend on itself")
                )
    cycle = find_cycle(workflow)
    if cycle:
        index = ids[cycle[0]]
        problems.append(
            Problem(
                f"{base}.tasks[{index}].depends_on",
                "dependency cycle: " + " -> ".join([*cycle, cycle[0]]),
            )
        )
    return problems


def find_cycle(workflow: WorkflowDefinition) -> list[str]:
    """A dependency cycle as a list of task ids, or ``[]`` (iterative DFS, any size)."""
    graph = {task.id: [d for d in task.depends_on if d != task.id] for task in workflow.tasks}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in graph:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:
            node, index = stack[-1]
            deps = graph.get(node, [])
            if index < len(deps):
                stack[-1] = (node, index + 1)
                dep = deps[index]
                if dep not in graph:
                    continue
                if state.get(dep) == 1:
                    return path[path.index(dep) :]
                if dep not in state:
                    state[dep] = 1
                    stack.append((dep, 0))
                    path.append(dep)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return []


def check_references(
    config: Config,
    *,
    source_types: Iterable[str],
    actions: Iterable[str],
) -> list[Problem]:
    """Checks that need the plugins: known source types, data sources and actions."""
    problems: list[Problem] = []
    types = set(source_types)
    action_names = set(actions)
    for name, source in config.datasources.items():
        if source.type not in types:
            problems.append(
                Problem(
                    f"datasources.{name}.type",
                    f"unknown data-source type {source.type!r} (known: {sorted(types)})",
                )
            )
    usable = set(config.datasources) | {s.type for s in config.datasources.values()}

    def check_source(path: str, name: str | None) -> None:
        if name is not None and name not in usable:
            problems.append(
                Problem(path, f"unknown data source {name!r} (configured: {sorted(usable)})")
            )

    for w_index, workflow in enumerate(config.workflows):
        for t_index, task in enumerate(workflow.tasks):
            path = f"workflows[{w_index}].tasks[{t_index}]"
            if task.action not in action_names:
                problems.append(Problem(f"{path}.action", f"unknown action {task.action!r}"))
            check_source(f"{path}.data_source", task.data_source)
            for f_index, name in enumerate(task.fallback):
                check_source(f"{path}.fallback[{f_index}]", name)
    for name, table in config.tables.items():
        check_source(f"tables.{name}.data_source", table.data_source)
        problems.extend(_check_mirrors(config, name, table))
    for a_index, agent in enumerate(config.agents.pool):
        for c_index, name in enumerate(agent.capabilities):
            check_source(f"agents.pool[{a_index}].capabilities[{c_index}]", name)
    return problems


# The source type each mirror key needs.
_MIRROR_TYPES = {"search_mirror": "elasticsearch", "cache_mirror": "redis"}


def _check_mirrors(config: Config, name: str, table: TableConfig) -> list[Problem]:
    """A mirror names a configured source of the right type; the primary is named too."""
    problems: list[Problem] = []
    mirrors = {key: getattr(table, key) for key in _MIRROR_TYPES if getattr(table, key)}
    for key, mirror in mirrors.items():
        path = f"tables.{name}.{key}"
        wanted = _MIRROR_TYPES[key]
        source = config.datasources.get(mirror)
        if source is None:
            problems.append(
                Problem(
                    path,
                    f"unknown data source {mirror!r}: a mirror names a configured source "
                    f"(configured: {sorted(config.datasources)})",
                )
            )
        elif source.type != wanted:
            problems.append(
                Problem(
                    path,
                    f"data source {mirror!r} is of type {source.type!r}; a {key} must be "
                    f"of type {wanted!r}",
                )
            )
        elif mirror == table.data_source:
            problems.append(Problem(path, "a mirror cannot be the table's own data_source"))
    if mirrors and table.data_source is None:
        problems.append(
            Problem(
                f"tables.{name}.data_source",
                "a table with mirrors needs data_source naming its primary (the source "
                "whose outbox feeds the mirrors)",
            )
        )
    return problems


def _decode_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot parse {path}: {error}") from error


def load_config(source: str | Path | Mapping[str, Any] | Config | None = None) -> Config:
    """Load a config from a path (TOML or JSON), a mapping, or ``None`` (embedded default)."""
    if isinstance(source, Config):
        return source
    return parse_config(read_config(source))


def read_config(source: str | Path | Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The raw mapping of a config: a path (TOML or JSON), a mapping, or the default."""
    if source is None:
        return tomllib.loads(DEFAULT_CONFIG_TOML)
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"config path {path} is a directory, not a file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = _decode_file(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the configuration must be a table/object")
    return data
