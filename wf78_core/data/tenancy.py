"""A table call as its caller: the caller's tenant and the ``[limits.<name>]`` it passes.

Every public :class:`~wf78_core.data.table.Table` method of a view with an identity runs
as one call (:func:`call_as`): the limits of its table and koa78 method (:data:`KOA78_METHOD`)
are passed first (:meth:`wf78_core.core.limits.Limiter.enter`: over a rate or over
``concurrent`` after a short wait, :class:`~wf78_core.errors.RateLimited`), then the work
runs with :data:`~wf78_core.core.fairness.TENANT` set to the identity's ``fair_by`` field
(``""`` when fair shares are off or the identity has none), so its operations wait in
their tenant's turn, and its log records and spans name the tenant.

One call counts once: inside it, the calls it makes (``update_by_id`` calling
``update``; a data route calling ``update`` then ``add`` for koa78's ``m``) enter nothing
again. A data route's request is one call of its own koa78 method (:meth:`TableView.call_as
<wf78_core.data.arguments.TableView.call_as>`), identity or not; it answers a refusal with
429 and a success with the ``RateLimit`` headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import wraps
from typing import Any, Protocol, TypeVar, cast

from wf78_core.config import Identity
from wf78_core.core.fairness import TENANT, tenant_of
from wf78_core.data.ports import EnginePort

__all__ = ["KOA78_METHOD", "Headers", "as_caller", "call_as"]

#: The koa78 method of each public Table method: what ``[limits.<name>] methods`` name.
#: ``search`` is ``get(kind="search")`` spelt otherwise; koa78's ``m`` (update, else
#: insert) has no method of its own: its route enters as ``m``.
KOA78_METHOD: dict[str, str] = {
    "get": "get",
    "search": "get",
    "get_public": "getbyBcid",
    "add": "mAdd",
    "add_many": "mAddMany",
    "add_many_by_id": "mAddManyByid",
    "update": "mUpdate",
    "update_by_id": "mUpdateByid",
    "update_many": "mUpdateMany",
    "upsert": "mByid",
    "upsert_by_first_field": "mByFirstField",
    "delete": "mdel",
    "delete_many": "mdelmany",
    "update_search_doc": "mUpdateElkByid",
}

# True inside a call: the calls made from it were counted with it.
_ENTERED: ContextVar[bool] = ContextVar("wf78_table_entered", default=False)

T = TypeVar("T")
Headers = list[tuple[bytes, bytes]]


async def call_as(
    engine: EnginePort,
    table: str,
    identity: Identity | None,
    method: str,
    headers: Headers | None,
    function: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    **kwargs: Any,
) -> T:
    """``function(*args, **kwargs)`` as one call of ``method`` (a koa78 name) of ``table``
    by ``identity``: the limits first (else :class:`~wf78_core.errors.RateLimited`), then
    the call with the identity's tenant set. On success the ``RateLimit-Policy`` /
    ``RateLimit`` headers of its first rate limit are added to ``headers`` (when given).
    Inside another call, or with no fair shares and no limits at all, ``function`` just
    runs."""
    fair_by = engine.admission.fair_by
    limits = engine.limits
    if not limits.rules:
        # No limit at all: nothing to count once, so only the tenant (set again, to the
        # same, by a call made inside: cheaper than marking the call entered).
        if not fair_by or identity is None:
            return await function(*args, **kwargs)
        token = TENANT.set(tenant_of(identity, fair_by))
        try:
            return await function(*args, **kwargs)
        finally:
            TENANT.reset(token)
    if _ENTERED.get():
        return await function(*args, **kwargs)
    # No limit of this table/method: still one call, so that none of the methods it calls
    # is limited as itself (a route's "m" calling add is no "mAdd").
    admitted = (
        await limits.enter(identity, table, method) if limits.rules_for(table, method) else None
    )
    tenant_token = TENANT.set(tenant_of(identity, fair_by))
    entered_token = _ENTERED.set(True)
    try:
        result = await function(*args, **kwargs)
    finally:
        _ENTERED.reset(entered_token)
        TENANT.reset(tenant_token)
        if admitted is not None and admitted.slots:
            await admitted.leave()
    if admitted is not None and headers is not None:
        headers += admitted.headers
    return result


class _View(Protocol):
    """What :func:`as_caller` needs of a table view."""

    engine: EnginePort
    name: str
    identity: Identity | None


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def as_caller(function: F) -> F:
    """Run a table view's method as one call of its koa78 method (:data:`KOA78_METHOD`) by
    the view's identity (:func:`call_as`); without identity, or inside another call, the
    method runs as it is."""
    method = KOA78_METHOD[function.__name__]

    @wraps(function)
    async def call(view: _View, /, *args: Any, **kwargs: Any) -> Any:
        identity = view.identity
        if identity is None or _ENTERED.get():
            return await function(view, *args, **kwargs)
        return await call_as(
            view.engine, view.name, identity, method, None, function, view, *args, **kwargs
        )

    return cast(F, call)
