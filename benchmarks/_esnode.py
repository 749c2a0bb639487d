"""An Elasticsearch client node for osmem-server, for the benchmarks only.

osmem-server (an in-memory OpenSearch look-alike) refuses the client's compatibility media
types (``application/vnd.elasticsearch+json; compatible-with=9``). This aiohttp node sends
plain ``application/json`` instead; both sides of B7 use it, so neither pays for it alone.
The adapter itself never rewrites headers (the test suite has its own copy in
``tests/esutil.py``).
"""

from __future__ import annotations

from typing import Any

from elastic_transport import AiohttpHttpNode, HttpHeaders

__all__ = ["NODE_CLASS", "JsonNode", "plain_media_type"]

_COMPATIBLE = "application/vnd.elasticsearch+"


def plain_media_type(value: str) -> str:
    """``application/vnd.elasticsearch+json; compatible-with=9`` -> ``application/json``."""
    if not value.startswith(_COMPATIBLE):
        return value
    return "application/" + value.removeprefix(_COMPATIBLE).split(";", 1)[0].strip()


class JsonNode(AiohttpHttpNode):
    """An aiohttp node sending plain JSON media types."""

    async def perform_request(  # type: ignore[override]
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: HttpHeaders | None = None,
        **options: Any,
    ) -> Any:
        if headers is not None:
            headers = headers.copy()
            for name in ("accept", "content-type"):
                if name in headers:
                    headers[name] = plain_media_type(headers[name])
        return await super().perform_request(method, target, body, headers, **options)


# The dotted path the elasticsearch source's ``node_class`` option takes.
NODE_CLASS = f"{JsonNode.__module__}.{JsonNode.__qualname__}"
