"""The koa78 data routes: ``/{apisys}/{apimicro}/{Table}/{method}`` for configured tables.

One module per idea, in the order a request meets them: :mod:`.matching` (which route a
path names, in any case; every other path is the app's), :mod:`.serving` (the caller, the
parameters, one table call, the answer), :mod:`.params`, :mod:`.encoding` (older koa78
clients' base64 ``pars``) and :mod:`.rows` (reading parameters and a table's values),
:mod:`.columns` (a table's columns and their converters), :mod:`.methods` (the 14 koa78
methods), :mod:`.answers` (the ``{res, errmsg, kind, back}`` envelope and the status
mapping) and :mod:`.koa78` (``[http] answers = "koa78"``: koa78's own answers).
"""

from __future__ import annotations

from wf78_core.http.routes.answers import Failure
from wf78_core.http.routes.columns import DEFAULT_MAX_PARS, TableRoutes
from wf78_core.http.routes.matching import DataRoute
from wf78_core.http.routes.methods import METHODS
from wf78_core.http.routes.serving import DataRoutes

__all__ = [
    "DEFAULT_MAX_PARS",
    "METHODS",
    "DataRoute",
    "DataRoutes",
    "Failure",
    "TableRoutes",
]
