"""``wf78 serve``: import an ASGI app from ``MODULE:APP``, wrap it in :class:`Wf78Middleware`
and serve it with uvicorn.

Several uvicorn workers each import the app themselves, from an import string: they call
:func:`app_factory`, which reads the target and the configuration from the environment
variables ``wf78 serve`` sets before it starts them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from wf78_core.cli.common import UsageError, config_path, log_config, plugin_modules
from wf78_core.cli.server import check_port, run_server, url_host
from wf78_core.core.logcontext import JsonFormatter
from wf78_core.engine import Engine
from wf78_core.errors import Wf78Error
from wf78_core.http.middleware import Wf78Middleware
from wf78_core.plugin.manager import import_plugins

__all__ = [
    "CONFIG_ENV",
    "FACTORY_ENV",
    "PLUGINS_ENV",
    "TARGET_ENV",
    "JsonAccessFormatter",
    "TargetError",
    "app_factory",
    "build_app",
    "import_target",
    "logging_options",
    "serve_command",
]

TARGET_ENV = "WF78_SERVE_TARGET"
CONFIG_ENV = "WF78_SERVE_CONFIG"
FACTORY_ENV = "WF78_SERVE_FACTORY"
# The --plugin modules, comma-separated.
PLUGINS_ENV = "WF78_SERVE_PLUGINS"
# The import string uvicorn's workers load.
FACTORY_IMPORT = f"{__name__}:app_factory"


class TargetError(Wf78Error):
    """``MODULE:APP`` does not name an importable ASGI app (exit status 2)."""

    exit_code = 2


def import_target(target: str, *, factory: bool = False) -> Any:
    """The object ``MODULE:ATTR`` names (``ATTR`` may be dotted); with ``factory``, the
    result of calling it. :class:`TargetError` says what is wrong with ``target``."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise TargetError(f"{target!r} is not MODULE:APP (e.g. 'myproject.asgi:app')")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise TargetError(f"cannot import module {module_name!r}: {error}") from None
        raise  # the module exists; something it imports does not: show the traceback
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if factory:
        if not callable(found):
            raise TargetError(f"{target!r} is not callable, so it cannot be an app factory")
        found = found()
    if not callable(found):
        raise TargetError(f"{target!r} is {type(found).__name__}, not an ASGI app")
    return found


def build_app(
    target: str,
    config: str | Path | None = None,
    *,
    factory: bool = False,
    plugins: Iterable[ModuleType] = (),
) -> Wf78Middleware:
    """The app ``target`` names, wrapped in :class:`Wf78Middleware` with ``config``
    (a file; None = the embedded default) and the extra plugin modules ``plugins``. An app
    already wrapped is served as it is."""
    plugins = list(plugins)
    app = import_target(target, factory=factory)
    if isinstance(app, Wf78Middleware):
        if config is not None or plugins:
            raise TargetError(
                f"{target!r} is already wrapped in Wf78Middleware with its own configuration; "
                "serve it without --config (and WF78_CONFIG) and --plugin (name plugins in "
                "its configuration's [engine] plugins), or serve the app it wraps"
            )
        return app
    return Wf78Middleware(app, engine=Engine(config, plugins=plugins))


def app_factory() -> Wf78Middleware:
    """The wrapped app for a uvicorn worker (``wf78_core.cli.serve:app_factory``, factory=True),
    from ``WF78_SERVE_TARGET``, ``WF78_SERVE_CONFIG``, ``WF78_SERVE_FACTORY`` and
    ``WF78_SERVE_PLUGINS``."""
    target = os.environ.get(TARGET_ENV)
    if not target:
        raise TargetError(f"{TARGET_ENV} is not set: start workers with 'wf78 serve'")
    config = os.environ.get(CONFIG_ENV) or None
    names = [name for name in os.environ.get(PLUGINS_ENV, "").split(",") if name]
    plugins, problems = import_plugins(names, where=PLUGINS_ENV)
    if problems:
        raise TargetError("; ".join(str(problem) for problem in problems))
    return build_app(target, config, factory=os.environ.get(FACTORY_ENV) == "1", plugins=plugins)


class JsonAccessFormatter(JsonFormatter):
    """uvicorn's access lines as JSON: client, method, path without its query string
    (koa78 clients may send a token or row values there), status."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, full_path, version, status = record.args
            path = str(full_path).partition("?")[0]
            record.msg = "%s - %s %s HTTP/%s %s"
            record.args = (client, method, path, version, status)
        return super().format(record)


def logging_options(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn's ``log_config`` for ``--log-format json`` (nothing for ``text``): every
    record (uvicorn's, wf78's, the app's) as one JSON object per line on stderr
    (:func:`~wf78_core.cli.common.log_config`), uvicorn's access lines without their
    query string."""
    if getattr(args, "log_format", "text") != "json":
        return {}
    level = "DEBUG" if args.log_level == "trace" else args.log_level.upper()
    config = log_config(level, "json")
    config["formatters"]["access"] = {"()": JsonAccessFormatter}
    config["handlers"]["access"] = {**config["handlers"]["default"], "formatter": "access"}
    config["loggers"] = {
        "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
        "uvicorn.error": {"level": level},
        "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
    }
    return {"log_config": config}


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    check_port(args.port)
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if args.workers > 1 and args.port == 0:
        # uvicorn's supervisor binds the port itself, after wf78 announced the URL.
        raise UsageError("--port 0 (any free port) serves one process: with --workers, name a port")
    # As uvicorn does: MODULE is looked up from the current directory (or --app-dir) first.
    sys.path.insert(0, str(Path(args.app_dir).resolve()))
    config = config_path(args)
    config = config.resolve() if config is not None else None
    plugins = plugin_modules(args)
    # Built here even for several workers: a bad target or config fails now, once, clearly.
    app = build_app(args.target, config, factory=args.factory, plugins=plugins)
    prefix = app.prefix
    if config is not None:
        described = str(config)
    elif not args.factory and import_target(args.target) is app:
        described = "its own Wf78Middleware's"  # the target was wrapped already
    else:
        described = "the embedded default"

    def announce(port: int) -> None:
        url = f"http://{url_host(args.host)}:{port}"
        print(
            f"wf78 serve: {args.target} on {url} (config: {described}); "
            f"wf78 at {url}{prefix}/ - Ctrl-C to stop",
            flush=True,
        )

    if args.workers > 1:
        os.environ[TARGET_ENV] = args.target
        os.environ[CONFIG_ENV] = str(config or "")
        os.environ[FACTORY_ENV] = "1" if args.factory else ""
        os.environ[PLUGINS_ENV] = ",".join(args.plugin)
        announce(args.port)
        uvicorn.run(
            FACTORY_IMPORT,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            lifespan="on",
            log_level=args.log_level,
            **logging_options(args),
        )
        return 0
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            lifespan="on",
            log_level=args.log_level,
            **logging_options(args),
        )
    )
    run_server(server, announce)
    print("wf78 serve: stopped", flush=True)
    return 0
