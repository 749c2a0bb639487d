"""Loading plugins and calling hooks that may be sync or async (the engine's side of the SDK:
plugins never import this module)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pluggy

from wf78_core.errors import ConfigError, Problem
from wf78_core.plugin import spec as hookspecs
from wf78_core.plugin.registry import Registry

__all__ = [
    "HookChain",
    "collect_registry",
    "import_plugins",
    "load_plugins",
    "make_plugin_manager",
    "plugin_names",
]


def make_plugin_manager(extra: Iterable[Any] = ()) -> pluggy.PluginManager:
    """Entry points of group ``wf78`` (built-ins included, as ``trylast``), then ``extra``.

    ``WF78_DISABLE_PLUGINS`` (comma-separated entry-point names) blocks plugins;
    ``WF78_TRACE_HOOKS=1`` prints every hook call to stderr.
    """
    pm = pluggy.PluginManager("wf78")
    pm.add_hookspecs(hookspecs)
    for name in os.environ.get("WF78_DISABLE_PLUGINS", "").split(","):
        if name.strip():
            pm.set_blocked(name.strip())
    pm.load_setuptools_entrypoints("wf78")
    for plugin in extra:
        if isinstance(plugin, str):
            plugin = __import__(plugin, fromlist=["_"])
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=_readable_name(pm, plugin))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        name = pm.get_name(error.plugin) or repr(error.plugin)
        raise ConfigError(f"plugin {name!r}: {error}") from error
    if os.environ.get("WF78_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda text: sys.stderr.write(text))
        pm.enable_tracing()
    return pm


def import_plugins(
    names: Iterable[str], where: str = "engine.plugins"
) -> tuple[list[ModuleType], list[Problem]]:
    """Import each plugin module ``names`` lists; each one that cannot be imported is a
    :class:`Problem` at ``{where}[i]`` naming the error (any error its import raises)."""
    modules: list[ModuleType] = []
    problems: list[Problem] = []
    for index, name in enumerate(names):
        try:
            modules.append(importlib.import_module(name))
        except Exception as error:  # a plugin's own import error is the user's to read
            problems.append(
                Problem(
                    f"{where}[{index}]",
                    f"{name!r} cannot be imported: {type(error).__name__}: {error}",
                )
            )
    return modules, problems


def load_plugins(names: Iterable[str], where: str = "engine.plugins") -> list[ModuleType]:
    """:func:`import_plugins`, raising :class:`ConfigError` with every module that fails."""
    modules, problems = import_plugins(names, where)
    if problems:
        raise ConfigError(problems)
    return modules


def _readable_name(pm: pluggy.PluginManager, plugin: Any) -> str:
    """``__name__`` (modules, classes) or the class path, so errors can name the plugin."""
    name = getattr(plugin, "__name__", None)
    if not isinstance(name, str):
        name = f"{type(plugin).__module__}.{type(plugin).__qualname__}"
    unique, number = name, 1
    while pm.has_plugin(unique):  # two instances of one class
        number += 1
        unique = f"{name}#{number}"
    return unique


class HookChain:
    """The implementations of one hook in pluggy's call order, callable sync or async.

    pluggy calls hooks synchronously; this calls each implementation itself and awaits
    what it returns when that is awaitable (datasette's ``await_me_maybe``).
    """

    __slots__ = ("impls", "name")

    def __init__(self, pm: pluggy.PluginManager, name: str, *, exclude: Iterable[Any] = ()) -> None:
        excluded = set(map(id, exclude))
        caller = getattr(pm.hook, name)
        self.name = name
        # get_hookimpls() lists in reverse call order (tryfirst last).
        self.impls: list[tuple[str, Any, tuple[str, ...]]] = [
            (impl.plugin_name, _traced(pm, name, impl), tuple(impl.argnames))
            for impl in reversed(caller.get_hookimpls())
            if id(impl.plugin) not in excluded
        ]

    def __bool__(self) -> bool:
        return bool(self.impls)

    async def first(self, **kwargs: Any) -> Any:
        """The first non-``None`` result, or ``None``."""
        for _, function, argnames in self.impls:
            result = function(**{name: kwargs[name] for name in argnames})
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result
        return None

    async def notify(self, **kwargs: Any) -> None:
        """Call every implementation, awaiting the async ones."""
        for _, function, argnames in self.impls:
            result = function(**{name: kwargs[name] for name in argnames})
            if inspect.isawaitable(result):
                await result


async def collect_registry(pm: pluggy.PluginManager, hook: str, what: str) -> Registry[Any]:
    """Fill a registry by calling a ``wf78_register_*`` hook, naming each plugin's additions."""
    registry: Registry[Any] = Registry(what)
    caller = getattr(pm.hook, hook)
    for impl in reversed(caller.get_hookimpls()):
        registry.owner = f"plugin {impl.plugin_name!r}"
        result = _traced(pm, hook, impl)(registry=registry)
        if inspect.isawaitable(result):
            await result
    return registry


def _traced(pm: pluggy.PluginManager, hook: str, impl: Any) -> Any:
    """``impl.function``, logging each call under ``WF78_TRACE_HOOKS`` (pluggy's own tracing
    never sees these calls: wf78 calls implementations itself to await async ones)."""
    function = impl.function
    if not os.environ.get("WF78_TRACE_HOOKS"):
        return function
    trace = pm.trace.root.get("hook")
    plugin_name = impl.plugin_name

    def call(**kwargs: Any) -> Any:
        trace(f"{hook} [{plugin_name}]", {name: _shown(value) for name, value in kwargs.items()})
        return function(**kwargs)

    return call


def _shown(value: Any) -> Any:
    """A hook argument as the trace prints it: an ASGI scope without its headers (they carry
    bearer tokens), anything else as it is."""
    if isinstance(value, dict) and "headers" in value and "type" in value:
        return {**value, "headers": f"<{len(value['headers'])} headers>"}
    return value


def plugin_names(pm: pluggy.PluginManager, hook: str) -> dict[str, Any]:
    """Plugin name -> plugin object for every plugin implementing ``hook``."""
    return {impl.plugin_name: impl.plugin for impl in getattr(pm.hook, hook).get_hookimpls()}
