"""Reading a configuration (a TOML/JSON file, a mapping or the embedded default) into a
:class:`Config`, collecting every problem on the way so one report names them all."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wf78_core.config.checks import check_definitions
from wf78_core.config.default import DEFAULT_CONFIG_TOML
from wf78_core.config.lenient import ConfigReport, msgspec_problem, shown
from wf78_core.config.rules import IDENTIFIER
from wf78_core.config.schema import (
    AgentsConfig,
    AuthConfig,
    Config,
    DataSourceConfig,
    EngineSettings,
    HttpConfig,
    LimitConfig,
    TableConfig,
)
from wf78_core.definitions import WorkflowDefinition
from wf78_core.errors import ConfigError, Problem

__all__ = [
    "collect_config",
    "collect_report",
    "load_config",
    "msgspec_problem",
    "parse_config",
    "read_config",
]

_SECTION_TYPES: dict[str, Any] = {
    "engine": EngineSettings,
    "agents": AgentsConfig,
    "auth": AuthConfig,
    "http": HttpConfig,
}
_KNOWN_KEYS = frozenset(
    {"engine", "datasources", "agents", "workflows", "tables", "auth", "http", "limits"}
)
_DATASOURCE_KEYS = frozenset({"type", "url", "pool_size", "timeout", "required"})


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
                child = shown(key) if path is None else f"{path}.{shown(key)}"
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
    """The configuration as far as it is well formed, and every problem found on the way.

    A value with a problem is set aside (an unknown key dropped, a bad value left to its
    default or replaced by an empty stand-in) and the cross-checks run on the rest, so one
    report names the structural and the semantic problems together.
    """
    config, report = collect_report(raw)
    return config, report.problems


def collect_report(
    raw: Mapping[str, Any], report: ConfigReport | None = None
) -> tuple[Config, ConfigReport]:
    """:func:`collect_config` with its :class:`ConfigReport` (``report``, or a new one), which
    also knows the paths set aside: a later check (the plugin-dependent one) adds its
    problems through :meth:`ConfigReport.add_checked`, so a stand-in's consequences are not
    reported."""
    report = ConfigReport() if report is None else report
    if not isinstance(raw, Mapping):
        report.add(Problem("", "the configuration must be a table/object"))
        return Config(), report
    for problem in _not_unicode(raw):
        report.add(problem)
    for key in raw:
        if key not in _KNOWN_KEYS:
            report.add(Problem(shown(key), f"unknown key (expected one of {sorted(_KNOWN_KEYS)})"))
    sections: dict[str, Any] = {}
    for key, type_ in _SECTION_TYPES.items():
        if key in raw:
            sections[key] = report.convert(raw[key], type_, key)
    config = Config(
        datasources=_datasources(raw.get("datasources", {}), report),
        workflows=_workflows(raw.get("workflows", []), report),
        tables=_tables(raw.get("tables", {}), report),
        limits=_limits(raw.get("limits", {}), report),
        **{key: value for key, value in sections.items() if value is not None},
    )
    report.add_checked(check_definitions(config))
    return config, report


def _datasources(raw: Any, report: ConfigReport) -> dict[str, DataSourceConfig]:
    """``[datasources.<name>]``: keys other than the common ones are the type's options."""
    if not isinstance(raw, Mapping):
        report.add(Problem("datasources", "must be a table of named sources"))
        report.set_aside.add("datasources")
        return {}
    datasources: dict[str, DataSourceConfig] = {}
    for name, body in raw.items():
        path = f"datasources.{shown(name)}"
        # Kept, a stand-in at worst: the name is configured, whatever its problems.
        if not isinstance(body, Mapping):
            report.add(Problem(path, "must be a table"))
            report.set_aside.add(path)
            datasources[name] = DataSourceConfig(type="")
            continue
        common = {k: v for k, v in body.items() if k in _DATASOURCE_KEYS}
        common["options"] = {k: v for k, v in body.items() if k not in _DATASOURCE_KEYS}
        if _not_unicode(common["options"]):  # named already: its options cannot be checked
            common["options"] = {}
            report.set_aside.add(path)
        source = report.convert(common, DataSourceConfig, path)
        if source is not None:
            datasources[name] = source
    return datasources


def _workflows(raw: Any, report: ConfigReport) -> tuple[WorkflowDefinition, ...]:
    if not isinstance(raw, list):
        report.add(Problem("workflows", "must be an array of tables"))
        report.set_aside.add("workflows")
        return ()
    workflows: list[WorkflowDefinition] = []
    for index, body in enumerate(raw):
        # A stand-in keeps the place of one that does not convert: the indexes stay right.
        workflow = report.convert(body, WorkflowDefinition, f"workflows[{index}]")
        if workflow is not None:
            workflows.append(workflow)
    return tuple(workflows)


def _tables(raw: Any, report: ConfigReport) -> dict[str, TableConfig]:
    if not isinstance(raw, Mapping):
        report.add(Problem("tables", "must be a table of named tables"))
        report.set_aside.add("tables")
        return {}
    tables: dict[str, TableConfig] = {}
    for name, body in raw.items():
        if not IDENTIFIER.match(str(name)):
            report.add(Problem(f"tables.{shown(name)}", "table name is not a plain identifier"))
            continue
        table = report.convert(body, TableConfig, f"tables.{name}")
        if table is not None:
            tables[name] = table
    return tables


def _limits(raw: Any, report: ConfigReport) -> dict[str, LimitConfig]:
    """``[limits.<name>]``, each converted on its own so a problem names its limit."""
    if not isinstance(raw, Mapping):
        report.add(Problem("limits", "must be a table of named limits"))
        report.set_aside.add("limits")
        return {}
    limits: dict[str, LimitConfig] = {}
    for name, body in raw.items():
        limit = report.convert(body, LimitConfig, f"limits.{shown(name)}")
        if limit is not None:
            limits[str(name)] = limit
    return limits


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
