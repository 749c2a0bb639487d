"""An OpenAPI 3.1 document of the HTTP API the middleware serves for one configuration.

:func:`openapi_document` describes the koa78 data routes of every table that has a
``route`` (14 methods each, GET with query parameters and POST with a JSON or form body,
answered with the ``{res, errmsg, kind, back}`` envelope) and the admin routes under the
prefix. The admin routes serve it as ``GET {prefix}/openapi.json`` (admin role needed, like
every route there). The document is a plain, JSON-serialisable dict; the response schemas
of runs, stats and dead letters come from their msgspec structs.

:mod:`.document` assembles it from :mod:`.data_paths` and :mod:`.admin_paths`.
"""

from __future__ import annotations

from wf78_core.http.openapi.document import openapi_document

__all__ = ["openapi_document"]
