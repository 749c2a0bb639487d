"""Cross-field checks of a parsed :class:`Config`: those that need no plugins (ids,
dependencies, cycles, schedules) and those that do (source types, actions, mirrors)."""

from __future__ import annotations

from collections.abc import Iterable

from croniter import croniter

from wf78_core.config.rules import IDENTIFIER, KOA78_METHODS, positive, priority_problem
from wf78_core.config.schema import Config, TableConfig
from wf78_core.definitions import WorkflowDefinition
from wf78_core.errors import Problem

__all__ = ["check_definitions", "check_references", "find_cycle", "fold_path"]


def check_definitions(config: Config) -> list[Problem]:
    """Cross-field checks that need no plugins: ids, dependencies, cycles, schedules."""
    problems: list[Problem] = []
    seen_workflows: set[str] = set()
    for w_index, workflow in enumerate(config.workflows):
        base = f"workflows[{w_index}]"
        problems.extend(_check_workflow(workflow, base))
        problems.extend(_check_concurrency_key(workflow, base))
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
        problems.extend(_check_table_name(name, table))
    problems.extend(_check_routes(config))
    problems.extend(_check_limits(config))
    return problems


def _check_limits(config: Config) -> list[Problem]:
    """``[limits.<name>]`` names configured tables and koa78 methods; ``[engine]
    fair_weights`` name tenants, which need fairness on to mean anything."""
    problems: list[Problem] = []
    for name, limit in config.limits.items():
        base = f"limits.{name}"
        if not IDENTIFIER.match(name):
            problems.append(Problem(base, "limit name is not a plain identifier"))
        for index, table in enumerate(limit.tables or ()):
            if table not in config.tables:
                problems.append(
                    Problem(
                        f"{base}.tables[{index}]",
                        f"unknown table {table!r} (tables: {sorted(config.tables)})",
                    )
                )
        for index, method in enumerate(limit.methods or ()):
            if method not in KOA78_METHODS:
                problems.append(
                    Problem(
                        f"{base}.methods[{index}]",
                        f"unknown method {method!r} (the koa78 methods: {', '.join(KOA78_METHODS)})",
                    )
                )
    if config.engine.fair_weights and config.engine.fair_by == "":
        problems.append(
            Problem("engine.fair_weights", 'fair_by = "" turns fair shares off: weights do nothing')
        )
    return problems


def fold_path(text: str) -> str:
    """A route, table name or path as the data routes match it: ASCII letters in any case
    (as koa78 matched them), anything else exactly (no Unicode case folding: ``\u212a``,
    the Kelvin sign, never names a ``k``)."""
    return text.lower() if text.isascii() else text


def _check_routes(config: Config) -> list[Problem]:
    """Data routes match case-insensitively, so two tables whose route and name differ only
    in case would share paths; ``[http] answers_by_route`` names routes that are served."""
    problems: list[Problem] = []
    served: dict[tuple[str, str], str] = {}
    for name, table in config.tables.items():
        if table.route is None:
            continue
        key = (fold_path(table.route), fold_path(name))
        other = served.setdefault(key, name)
        if other != name:
            problems.append(
                Problem(
                    f"tables.{name}.route",
                    f"table {name!r} and table {other!r} are both served under "
                    f"{table.route!r}: data routes match the route and table name in any case "
                    "(as koa78 did), so their paths would be the same",
                )
            )
    routes = sorted({route for route, _ in served})
    modes: dict[str, tuple[str, str]] = {}
    for route, mode in config.http.answers_by_route.items():
        path = f"http.answers_by_route.{route}"
        folded = fold_path(route)
        if folded not in routes:
            problems.append(Problem(path, f"no table is served under {route!r} (routes: {routes})"))
        first = modes.setdefault(folded, (route, mode))
        if first[1] != mode:
            problems.append(
                Problem(
                    path,
                    f"{route!r} is the route {first[0]!r} in another case, answered "
                    f"{first[1]!r} there",
                )
            )
    return problems


def _check_table_name(name: str, table: TableConfig) -> list[Problem]:
    problems: list[Problem] = []
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
    priority = priority_problem(workflow.priority)
    if priority:
        problems.append(Problem(f"{base}.priority", priority))
    if not workflow.tasks:
        problems.append(Problem(f"{base}.tasks", "a workflow needs at least one task"))
    problems.extend(_check_trigger(workflow, base))
    ids: dict[str, int] = {}
    problems.extend(_check_tasks(workflow, base, ids))
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


def _check_concurrency_key(workflow: WorkflowDefinition, base: str) -> list[Problem]:
    """``concurrency_key = "context.<field>"`` and ``max_per_key`` go together (see
    wf78_core.core.concurrency_keys; with the redis backend, wf78_core.cluster.shares
    keeps them for the whole cluster)."""
    key, most = workflow.concurrency_key, workflow.max_per_key
    if key is None:
        if most is None:
            return []
        return [Problem(f"{base}.max_per_key", "needs `concurrency_key` (the runs it counts)")]
    path = f"{base}.concurrency_key"
    problems: list[Problem] = []
    field = key.removeprefix("context.")
    if field == key or not all(field.split(".")):
        problems.append(
            Problem(path, f'must be "context.<field>" (a field of the run\'s context), got {key!r}')
        )
    if most is None:
        problems.append(Problem(f"{base}.max_per_key", "`concurrency_key` needs `max_per_key`"))
    elif most < 1:
        problems.append(Problem(f"{base}.max_per_key", f"must be >= 1, got {most}"))
    if workflow.trigger == "schedule":
        problems.append(
            Problem(path, "a scheduled run's context has no field to key on: use max_concurrent")
        )
    return problems


def _check_trigger(workflow: WorkflowDefinition, base: str) -> list[Problem]:
    problems: list[Problem] = []
    if workflow.trigger == "event" and not workflow.event:
        problems.append(Problem(f"{base}.event", "an event-triggered workflow needs `event`"))
    if workflow.trigger == "schedule":
        schedule = workflow.schedule
        if schedule is None:
            problems.append(Problem(f"{base}.schedule", "a scheduled workflow needs `schedule`"))
        elif isinstance(schedule, str):
            if not croniter.is_valid(schedule):
                problems.append(Problem(f"{base}.schedule", f"bad cron string {schedule!r}"))
        elif not positive(schedule):
            problems.append(
                Problem(
                    f"{base}.schedule",
                    f"interval must be positive and finite seconds, got {schedule}",
                )
            )
    return problems


def _check_tasks(workflow: WorkflowDefinition, base: str, ids: dict[str, int]) -> list[Problem]:
    """The tasks' own fields and their dependencies; fills ``ids`` (task id -> first index)."""
    problems: list[Problem] = []
    for index, task in enumerate(workflow.tasks):
        path = f"{base}.tasks[{index}]"
        if not task.id:
            problems.append(Problem(f"{path}.id", "must not be empty"))
        if task.id in ids:
            problems.append(Problem(f"{path}.id", f"duplicate task id {task.id!r}"))
        ids.setdefault(task.id, index)
        if task.timeout is not None and not positive(task.timeout):
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
    # A source's type names it too ("" is a stand-in for a type that was missing or bad).
    usable = set(config.datasources) | {s.type for s in config.datasources.values() if s.type}

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
