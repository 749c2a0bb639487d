"""How the admin routes answer: JSON bodies, and failures as ``{"error", "field"}`` with the
fitting status (the admin routes' envelope)."""

from __future__ import annotations

from typing import Any

import msgspec

from wf78_core.http.asgi import Send, send_bytes

__all__ = ["ENCODER", "JSON", "error", "send_json", "shown"]


def _encode_unknown(value: Any) -> Any:
    # Task results are whatever actions return: keep the snapshot readable, never fail.
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)


ENCODER = msgspec.json.Encoder(enc_hook=_encode_unknown)
JSON = b"application/json"


def shown(value: str) -> str:
    """A caller's value for an error message: quoted, and shortened past 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_bytes(send, status, ENCODER.encode(payload), JSON, headers or ())


async def error(
    send: Send,
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A failure: ``{"error": message, "field": field}`` with ``status``."""
    payload: dict[str, Any] = {"error": message}
    if field is not None:
        payload["field"] = field
    await send_json(send, status, payload, headers)
