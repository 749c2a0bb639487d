"""A pytest plugin (``-p conformance.wrap``) that wraps the app of every Starlette
``TestClient`` in ``Wf78Middleware``.

Each wrapped app gets an engine of its own on an embedded SQLite file in a temporary
folder. Its data routes live under ``/apiwf78/conformance`` and its admin routes under
``/_wf78``, paths no Starlette test uses, so every request of the suite is the app's."""

from __future__ import annotations

import functools
import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["config_for"]

# What the wrapped apps' engines are built from, and where their files go.
_folder: Path | None = None
_numbers = itertools.count(1)
_restore: Callable[[], None] | None = None


def config_for(folder: Path, number: int) -> dict[str, Any]:
    """The configuration of the ``number``-th wrapped app: its own database and journal."""
    return {
        "engine": {
            "drain_timeout": 2.0,
            "journal": f"sqlite:///{folder / f'journal-{number}.db'}",
        },
        "datasources": {
            "db": {
                "type": "sqlite",
                "url": f"sqlite:///{folder / f'{number}.db'}",
                # Short reads run on the event loop by design (wf78_sqlite); the suite's
                # blockbuster fails any blocking call there, so every read takes a thread.
                "inline_read_steps": 0,
            }
        },
        "tables": {
            "items": {
                "columns": {"name": "text", "qty": "int"},
                "owner": "cid",
                "route": "apiwf78/conformance",
                "data_source": "db",
            }
        },
    }


def pytest_configure(config: pytest.Config) -> None:
    global _folder, _restore
    from starlette.testclient import TestClient

    from wf78_core import Wf78Middleware

    _folder = Path(tempfile.mkdtemp(prefix="wf78-conformance-"))
    folder = _folder
    original = TestClient.__init__

    @functools.wraps(original)
    def wrapped_init(self: TestClient, app: Any, *args: Any, **kwargs: Any) -> None:
        middleware = Wf78Middleware(app, config=config_for(folder, next(_numbers)))
        original(self, middleware, *args, **kwargs)

    TestClient.__init__ = wrapped_init  # type: ignore[method-assign]

    def restore() -> None:
        TestClient.__init__ = original  # type: ignore[method-assign]

    _restore = restore


def pytest_unconfigure(config: pytest.Config) -> None:
    global _folder, _restore
    if _restore is not None:
        _restore()
        _restore = None
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
        _folder = None
