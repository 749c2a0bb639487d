"""Loading what the plugins registered, checked against a configuration."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import pluggy

from wf78_core.config import Config, check_references, msgspec_problem
from wf78_core.errors import ConfigError, Problem
from wf78_core.plugin.datasource import load_factory, options_for
from wf78_core.plugin.manager import collect_registry
from wf78_core.plugin.registry import Registry

__all__ = ["Loaded", "load_registries"]


@dataclass(frozen=True)
class Loaded:
    """The registered source types and actions, and a factory (with its checked
    options) for each configured data source."""

    source_types: Registry[Any]
    actions: dict[str, Callable[..., Any]]
    factories: dict[str, tuple[Any, Any]]


async def load_registries(
    pm: pluggy.PluginManager, config: Config, allocators: Mapping[str, Any]
) -> Loaded:
    """Every registry the plugins fill, and every problem of ``config`` that depends on
    them (unknown types, actions and allocator; bad source options) in one
    :class:`ConfigError`."""
    source_types = await collect_registry(pm, "wf78_register_datasources", "data-source type")
    registered = await collect_registry(pm, "wf78_register_actions", "action")
    actions = {name: registered[name] for name in registered}
    problems = check_references(config, source_types=source_types, actions=actions)
    chosen = config.agents.allocator
    if allocators and chosen not in allocators:
        problems.append(
            Problem(
                "agents.allocator", f"unknown allocator {chosen!r} (known: {sorted(allocators)})"
            )
        )
    factories: dict[str, tuple[Any, Any]] = {}
    for name, source in config.datasources.items():
        kind = source_types.get(source.type)
        if kind is None:
            continue
        factory = load_factory(kind, what=f"data source {name!r} (type {source.type})")
        try:
            factories[name] = (factory, options_for(factory, source.options))
        except msgspec.ValidationError as error:
            problems.append(msgspec_problem(f"datasources.{name}", error))
    if problems:
        raise ConfigError(problems)
    return Loaded(source_types, actions, factories)
