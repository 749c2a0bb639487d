"""Serving one data request: who calls, with what parameters, on which table, answered how.

The request is walked once: the caller's identity (the ``wf78_authenticate`` chain), the
priority header, the parameters, the owner check, then one :class:`Table` call and one
answer. An HTTP method other than GET or POST is 405. The call enters the table once as the
route's koa78 method (:meth:`Table.call_as`): its ``[limits.<name>]`` (a refusal is 429 with
``Retry-After`` and the ``RateLimit`` headers, a pass answers them too) and its tenant.

Older koa78 clients' encoded ``pars`` (``v``, ``jsonbase64``, ``base64``) are decoded first
(:mod:`.encoding`); a route answering as koa78 answers a write that matched nothing with
HTTP 200 and koa78's negative ``res`` (:mod:`.koa78`), and its successes with ``kind``
``"json"``.

``Idempotency-Key`` (1 to 255 printable ASCII characters, else 400 naming it): a write
replayed with the same key answers the first one's ``back`` and writes nothing again; the
key sent again with another body answers 422. The key is
scoped by the caller (the owner on an owned table), so tenants never share one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wf78_core.config import Identity
from wf78_core.core.auth import bearer_token
from wf78_core.data.table import Table, owner_problem
from wf78_core.errors import RowNotFound
from wf78_core.http.asgi import Receive, Scope, Send, header, parse_priority
from wf78_core.http.identity import Callers, effective_priority
from wf78_core.http.keys import BadKey, header_key, scoped_key
from wf78_core.http.routes.answers import (
    Failure,
    answer,
    answer_failure,
    answer_missed,
    bad,
    failure_of,
    shown,
)
from wf78_core.http.routes.columns import DEFAULT_MAX_PARS, TableRoutes
from wf78_core.http.routes.encoding import decode_pars
from wf78_core.http.routes.koa78 import MISS_CODES, Missed
from wf78_core.http.routes.matching import DataRoute, RouteMap
from wf78_core.http.routes.params import read_params

if TYPE_CHECKING:
    from wf78_core.engine import Engine

__all__ = ["DataRoutes"]

_ALLOW = [(b"allow", b"GET, POST")]


class DataRoutes:
    """The koa78 data routes of an engine's configured tables.

    ``match(path)`` is a dict lookup for a served path (``None``: the app's path);
    ``handle`` authenticates the caller, reads the parameters, calls the
    :class:`~wf78_core.data.table.Table` method and answers the envelope. ``callers`` may be
    shared with the middleware (one hook chain).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_body: int = 1 << 20,
        max_page: int = 1000,
        max_pars: int = DEFAULT_MAX_PARS,
        callers: Callers | None = None,
    ) -> None:
        self.engine = engine
        self.max_body = max_body
        self.max_page = max_page
        self.max_pars = max_pars
        config = engine.config
        self.callers = callers if callers is not None else Callers(engine.pm)
        self._guest = config.auth.guest
        paths = RouteMap(config, max_pars=max_pars, max_page=max_page)
        #: The folded path prefixes (``/apisys/apimicro/`` in lower case, see
        #: :func:`~wf78_core.http.routes.matching.fold_path`) under which :meth:`match` may
        #: find a route.
        self.claims: tuple[str, ...] = paths.claims
        self.match = paths.match  # bound once: matching is on every claimed request

    async def handle(self, scope: Scope, receive: Receive, send: Send, route: DataRoute) -> None:
        # Asked before anything is answered: a failing authentication plugin fails the
        # request as it does on the app's own routes.
        identity = await self.callers.identify(scope)
        koa78 = route.table.koa78
        headers: list[tuple[bytes, bytes]] = []
        try:
            back = await self._serve(scope, receive, identity, route, headers)
        except Failure as failure:
            await answer_failure(send, failure)
            return
        except Missed as missed:
            await answer_missed(send, missed.res, missed.message, missed.back)
            return
        except Exception as error:
            code = MISS_CODES.get(route.method)
            if koa78 and code is not None and isinstance(error, RowNotFound):
                # An upsert's update that found no row after all (mByid and the like).
                await answer_missed(send, code, str(error), str(error))
                return
            where = f"{route.table.name}/{route.method}"
            await answer_failure(send, failure_of(error, where))
            return
        await answer(send, back, kind="json" if koa78 else "", headers=headers)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        identity: Identity | None,
        route: DataRoute,
        headers: list[tuple[bytes, bytes]],
    ) -> Any:
        if scope["method"] not in ("GET", "POST"):
            raise Failure(
                405,
                "method_not_allowed",
                f"{scope['method']} is not allowed: use GET or POST",
                list(_ALLOW),
            )
        requested = header(scope, b"x-wf78-priority")
        priority: int | None = None
        if requested is not None:
            priority = parse_priority(requested)
            if priority is None:
                raise bad(
                    "X-WF78-Priority",
                    f"must be an integer of at most 9 digits, got {shown(requested)}",
                )
        info = route.table
        params = await read_params(scope, receive, self.max_body)
        decode_pars(params, header(scope, b"v"))
        sid = params.get("sid")
        if (
            isinstance(sid, str)
            and sid
            and (identity is None or identity is self._guest)
            and bearer_token(scope) is None
        ):
            # koa78 clients may send the session token as a parameter.
            identity = await self.callers.identify_token(scope, sid)
        if route.method == "getbyBcid":
            if not info.config.public_read:
                raise Failure(
                    403,
                    "forbidden",
                    f"table {info.name!r} does not allow public reads (getbyBcid)",
                )
        else:
            _check_identity(info, identity)
        table = Table(
            self.engine,
            info.name,
            identity=identity,
            priority=effective_priority(priority, identity),
            idempotency_key=_idempotency_key(scope, info, identity),
        )
        # Once for the request, whatever Table methods its handler calls: a [limits.<name>]
        # may refuse (RateLimited: 429); the work waits in its tenant's turn.
        return await table.call_as(route.method, headers, route.handler, info, table, params)


def _check_identity(info: TableRoutes, identity: Identity | None) -> None:
    owner = info.owner
    if owner is None:
        return
    if identity is None:
        raise Failure(
            401,
            "unauthorized",
            f"table {info.name!r} is scoped by {owner}: send Authorization: Bearer <token>",
            [(b"www-authenticate", b"Bearer")],
        )
    if not getattr(identity, owner):
        raise Failure(
            403, "forbidden", f"table {info.name!r} is scoped by {owner}: the identity has none"
        )
    problem = owner_problem(getattr(identity, owner))
    if problem is not None:
        raise Failure(
            403, "forbidden", f"table {info.name!r} is scoped by {owner}: its {owner} {problem}"
        )


def _idempotency_key(scope: Scope, info: TableRoutes, identity: Identity | None) -> str | None:
    """The request's ``Idempotency-Key`` header scoped by its caller (the owner of an owned
    table, else company and user), so two tenants' equal keys never meet; None without one."""
    try:
        value = header_key(scope)
    except BadKey as error:
        raise Failure(400, "invalid", str(error)) from None
    if value is None:
        return None
    if identity is None:
        caller = ""
    elif info.owner is not None:
        caller = str(getattr(identity, info.owner))
    else:
        caller = f"{identity.cid}/{identity.uid}"
    return scoped_key(value, caller)
