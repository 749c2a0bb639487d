"""Which data route a path names: ``/{apisys}/{apimicro}/{Table}/{method}``.

wf78 serves exactly the 14 methods of every configured table with a ``route``; every other
path goes to the wrapped app untouched, under a configured route too: a table that is not
configured, a method that is not one of the 14 (an app's own method beside wf78's, as koa78
controllers added theirs), a path of another shape. As in koa78, apisys, apimicro, the table
and the method match in any case of their ASCII letters (``/ApiTest/TestMenu/testtb/GET``
is table ``Testtb``'s ``get``); the configuration refuses two tables whose paths differ only
in case.
"""

from __future__ import annotations

from wf78_core.config import Config
from wf78_core.config.checks import fold_path
from wf78_core.http.routes.columns import DEFAULT_MAX_PARS, TableRoutes, has_search_source
from wf78_core.http.routes.methods import HANDLERS, METHODS, Handler

__all__ = ["DataRoute", "RouteMap", "fold_path"]


class DataRoute:
    """One ``/{apisys}/{apimicro}/{Table}/{method}`` path of a configured table."""

    __slots__ = ("handler", "method", "table")

    def __init__(self, table: TableRoutes, method: str, handler: Handler) -> None:
        self.table = table
        self.method = method
        self.handler = handler

    def __repr__(self) -> str:
        return f"DataRoute({self.table.name!r}, {self.method!r})"


class RouteMap:
    """The paths of every table with a ``route``: a served path is one dict lookup (two
    when it is not written as configured)."""

    __slots__ = ("_exact", "_folded", "claims")

    def __init__(
        self, config: Config, *, max_pars: int = DEFAULT_MAX_PARS, max_page: int = 1000
    ) -> None:
        self._exact: dict[str, DataRoute] = {}
        self._folded: dict[str, DataRoute] = {}
        modes = {fold_path(route): mode for route, mode in config.http.answers_by_route.items()}
        prefixes: set[str] = set()
        for name, table in config.tables.items():
            if table.route is None:
                continue
            prefixes.add(f"/{fold_path(table.route)}/")
            info = TableRoutes(
                name,
                table,
                searchable=has_search_source(config, table),
                max_pars=max_pars,
                max_page=max_page,
                answers=modes.get(fold_path(table.route), config.http.answers),
            )
            for method in METHODS:
                path = f"/{table.route}/{name}/{method}"
                route = DataRoute(info, method, HANDLERS[method])
                self._exact[path] = route
                # The configuration refuses two tables on one folded path; first one wins.
                self._folded.setdefault(fold_path(path), route)
        #: The folded path prefixes (``/apisys/apimicro/``, see :func:`fold_path`) under which
        #: :meth:`match` may find a route.
        self.claims = tuple(sorted(prefixes))

    def match(self, path: str) -> DataRoute | None:
        """The route of ``path``, in any case of its ASCII letters; ``None`` for any other
        path (the app serves it)."""
        route = self._exact.get(path)
        if route is None:
            route = self._folded.get(fold_path(path))
        return route
