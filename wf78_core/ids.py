"""Row ids: snowflakes minted here, and the shape of each kind of id a table may have.

A snowflake is a 63-bit number written in decimal: 41 bits of milliseconds since
2020-09-13 12:26:40 UTC, 10 bits of node id and 12 of sequence. Two processes never mint
the same one as long as their node ids differ. The engine (the composition root) gives
this process its node id when it starts, with :func:`hold_node_id`: ``[engine] node_id``,
or one leased in Redis by the Redis backend (:mod:`wf78_core.cluster.nodes`); the node
id in use is the one held last and still held. A process that holds none (no engine
running) uses a random fallback, drawn again in a forked child.

A table's ids are ``"snowflake"`` (the default: 1 to 64 digits, minted on insert) or
``"text"`` (``[tables.<name>] id = "text"``: 1 to 64 characters of ``A-Z a-z 0-9 . _ :
-``, chosen by the caller); :func:`id_problem` says why a value is not of a kind.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from typing import Literal

__all__ = [
    "ID_KINDS",
    "MAX_ID",
    "NODE_IDS",
    "IdKind",
    "hold_node_id",
    "id_problem",
    "node_id",
    "release_node_id",
    "snowflake_fields",
    "snowflake_id",
]

#: What a table's ids are: minted snowflakes or the caller's text.
IdKind = Literal["snowflake", "text"]
ID_KINDS: tuple[IdKind, ...] = ("snowflake", "text")
#: The most characters an id has (the SQL id column is VARCHAR(64)).
MAX_ID = 64
#: Node ids are 0 to NODE_IDS - 1 (10 bits).
NODE_IDS = 1024

_EPOCH_MS = 1_600_000_000_000
_DIGITS = re.compile(r"[0-9]{1,64}")
_TEXT = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_lock = threading.Lock()
_held: list[int] = []  # node ids held by running engines; the last one is in use
_fallback = secrets.randbelow(NODE_IDS)
_last_ms = 0
_sequence = 0


def _forked() -> None:
    """A forked child holds no lease of its parent's and must not share its node id."""
    global _lock, _fallback, _last_ms, _sequence
    _lock = threading.Lock()
    _held.clear()
    _fallback = secrets.randbelow(NODE_IDS)
    _last_ms = _sequence = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def id_problem(value: str, kind: IdKind) -> str | None:
    """Why ``value`` cannot be the id of a row of a table whose ids are ``kind``, else None;
    the reason reads after the field's name (``"mid must be ..."``)."""
    if kind == "text":
        if _TEXT.fullmatch(value):
            return None
        return "must be an id of 1 to 64 characters, each a letter, a digit, '.', '_', ':' or '-'"
    if _DIGITS.fullmatch(value):
        return None
    return "must be an id of 1 to 64 digits (the table's ids are snowflakes)"


def hold_node_id(node: int) -> None:
    """Mint snowflakes with node id ``node`` until :func:`release_node_id` (the node id
    held last is the one in use). Only the holder of ``node`` across every process and
    host that writes the same tables may call this."""
    if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < NODE_IDS:
        raise ValueError(f"node id must be an integer from 0 to {NODE_IDS - 1}, got {node!r}")
    with _lock:
        _held.append(node)


def release_node_id(node: int) -> None:
    """Stop holding ``node`` (once, as often as it was held); unknown ones are ignored."""
    with _lock:
        for index in range(len(_held) - 1, -1, -1):
            if _held[index] == node:
                del _held[index]
                return


def node_id() -> int:
    """The node id snowflakes are minted with now."""
    with _lock:
        return _held[-1] if _held else _fallback


def snowflake_id() -> str:
    """A 63-bit id (41 bits of milliseconds, 10 of node id, 12 of sequence) as a string."""
    global _last_ms, _sequence
    with _lock:
        node = _held[-1] if _held else _fallback
        now = int(time.time() * 1000)
        if now < _last_ms:  # the clock went back: keep counting from the last stamp
            now = _last_ms
        if now == _last_ms:
            _sequence = (_sequence + 1) & 0xFFF
            if _sequence == 0:  # 4096 ids this millisecond: borrow the next one
                now = _last_ms + 1
        else:
            _sequence = 0
        _last_ms = now
        return str(((now - _EPOCH_MS) << 22) | (node << 12) | _sequence)


def snowflake_fields(value: str) -> tuple[float, int, int]:
    """``(unix seconds, node id, sequence)`` of a snowflake; ValueError when ``value`` is
    not a 63-bit decimal number. An id derived from an idempotency key
    (:func:`wf78_core.idempotency.key_id`) has the same shape but carries no time."""
    if not _DIGITS.fullmatch(value) or int(value) >= 1 << 63:
        raise ValueError(f"not a snowflake id: {value!r}")
    number = int(value)
    return (
        ((number >> 22) + _EPOCH_MS) / 1000,
        (number >> 12) & (NODE_IDS - 1),
        number & 0xFFF,
    )
