"""Small pure-ASGI helpers shared by the middleware's routes: bodies, JSON, headers."""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

__all__ = [
    "MAX_JSON_DEPTH",
    "BodyTooLarge",
    "Receive",
    "Scope",
    "Send",
    "header",
    "nested_deeper_than",
    "parse_priority",
    "query_params",
    "read_body",
    "send_bytes",
    "send_json",
]

Scope = MutableMapping[str, Any]
Receive = Any  # async () -> message
Send = Any  # async (message) -> None

_ENCODER = msgspec.json.Encoder()
# A requested priority: small integers only (the scheduler does float arithmetic on them).
_PRIORITY = re.compile(r"[+-]?[0-9]{1,9}")


#: The deepest nesting of arrays and objects a request's JSON may have.
MAX_JSON_DEPTH = 64


def nested_deeper_than(
    value: Any, limit: int = MAX_JSON_DEPTH, *, text: bytes | str | None = None
) -> bool:
    """Whether decoded JSON ``value`` nests arrays and objects more than ``limit`` deep
    (``text``, the JSON it came from, lets a shallow document skip the walk). Without this
    check the limit is msgspec's: the interpreter's recursion limit, which depends on how
    deep the server's stack already is."""
    if text is not None:
        if isinstance(text, str):
            brackets = text.count("[") + text.count("{")
        else:
            brackets = text.count(b"[") + text.count(b"{")
        if brackets <= limit:
            return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


class BodyTooLarge(Exception):
    """The request body is over the configured limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def parse_priority(text: str) -> int | None:
    """The ``X-Wf78-Priority`` header as an integer of at most 9 digits, or None."""
    text = text.strip(" \t")
    return int(text) if _PRIORITY.fullmatch(text) else None


def query_params(scope: Scope) -> dict[str, list[str]]:
    raw = scope.get("query_string", b"")
    return parse_qs(raw.decode("latin-1"), keep_blank_values=True) if raw else {}


async def read_body(receive: Receive, limit: int, scope: Scope | None = None) -> bytes:
    """The whole request body; :class:`BodyTooLarge` as soon as it passes ``limit``."""
    if scope is not None:
        declared = header(scope, b"content-length")
        # ASCII digits only ("²".isdigit() is true); a number too long for int() is too large.
        if declared is not None and declared.isascii() and declared.isdigit():
            if len(declared) > 18 or int(declared) > limit:
                raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_bytes(send, status, _ENCODER.encode(payload), b"application/json", headers)
