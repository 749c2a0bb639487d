"""Test helpers for the Elasticsearch adapter against osmem-server (an OpenSearch look-alike)."""

from __future__ import annotations

from typing import Any

from elastic_transport import AiohttpHttpNode, HttpHeaders

__all__ = ["JsonNode", "plain_media_type"]

_COMPATIBLE = "application/vnd.elasticsearch+"


def plain_media_type(value: str) -> str:
    """``application/vnd.elasticsearch+json; compatible-with=9`` -> ``application/json``."""
    if not value.startswith(_COMPATIBLE):
        return value
    return "application/" + value.removeprefix(_COMPATIBLE).split(";", 1)[0].strip()


class JsonNode(AiohttpHttpNode):
    """An aiohttp node sending plain JSON media types: osmem refuses the client's
    compatibility-mode ones. Tests only; the adapter never rewrites headers."""

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
