"""Which data route a path names: ``/{apisys}/{apimicro}/{Table}/{method}``.

Every configured ``route = "apisys/apimicro"`` claims the paths below it; everything else
goes to the wrapped app. Under a claimed prefix an unknown table or method is 404 and a
method starting with ``_`` is 403 (koa78 refused those too).
"""

from __future__ import annotations

from wf78_core.config import Config
from wf78_core.http.routes.answers import Failure
from wf78_core.http.routes.columns import DEFAULT_MAX_PARS, TableRoutes, has_search_source
from wf78_core.http.routes.methods import HANDLERS, METHODS, Handler

__all__ = ["DataRoute", "Refusal", "RouteMap"]


class DataRoute:
    """One ``/{apisys}/{apimicro}/{Table}/{method}`` path of a configured table."""

    __slots__ = ("handler", "method", "table")

    def __init__(self, table: TableRoutes, method: str, handler: Handler) -> None:
        self.table = table
        self.method = method
        self.handler = handler

    def __repr__(self) -> str:
        return f"DataRoute({self.table.name!r}, {self.method!r})"


class Refusal:
    """A path under a configured route that names no table method (404) or a refused one."""

    __slots__ = ("failure",)

    def __init__(self, failure: Failure) -> None:
        self.failure = failure


class RouteMap:
    """The paths of every table with a ``route``: a served path is one dict lookup."""

    __slots__ = ("_exact", "_prefixes", "claims")

    def __init__(
        self, config: Config, *, max_pars: int = DEFAULT_MAX_PARS, max_page: int = 1000
    ) -> None:
        self._exact: dict[str, DataRoute] = {}
        self._prefixes: dict[tuple[str, str], set[str]] = {}
        for name, table in config.tables.items():
            if table.route is None:
                continue
            apisys, apimicro = table.route.split("/")
            self._prefixes.setdefault((apisys, apimicro), set()).add(name)
            info = TableRoutes(
                name,
                table,
                searchable=has_search_source(config, table),
                max_pars=max_pars,
                max_page=max_page,
            )
            for method in METHODS:
                path = f"/{table.route}/{name}/{method}"
                self._exact[path] = DataRoute(info, method, HANDLERS[method])
        #: The path prefixes under which :meth:`match` may answer (``/apisys/apimicro/``).
        self.claims = tuple(f"/{apisys}/{apimicro}/" for apisys, apimicro in self._prefixes)

    def match(self, path: str) -> DataRoute | Refusal | None:
        """The route of ``path``; a :class:`Refusal` for a claimed path that names no
        method; ``None`` when no configured route claims it (the app serves it)."""
        route = self._exact.get(path)
        if route is not None:
            return route
        if not path.startswith("/api"):
            return None
        parts = path.split("/")
        if len(parts) < 4 or (parts[1], parts[2]) not in self._prefixes:
            return None
        base = f"/{parts[1]}/{parts[2]}"
        if len(parts) != 5 or not parts[3] or not parts[4]:
            return Refusal(
                Failure(404, "not_found", f"no data route {path!r}: use {base}/<Table>/<method>")
            )
        table, method = parts[3], parts[4]
        if method.startswith("_"):
            return Refusal(Failure(403, "forbidden", f"method {method!r} is not served"))
        if table not in self._prefixes[(parts[1], parts[2])]:
            return Refusal(Failure(404, "not_found", f"unknown table {table!r} under {base}/"))
        return Refusal(
            Failure(
                404,
                "not_found",
                f"unknown method {method!r} of table {table!r} (methods: {', '.join(METHODS)})",
            )
        )
