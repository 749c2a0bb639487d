"""Snowflake ids as strings, as koa78 generated them: time-ordered and unique per process."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["snowflake_id"]

_EPOCH_MS = 1_600_000_000_000
_lock = threading.Lock()
_worker = (os.getpid() ^ threading.get_native_id()) & 0x3FF
_last_ms = 0
_sequence = 0


def snowflake_id() -> str:
    """A 63-bit id (41 bits of milliseconds, 10 of worker, 12 of sequence) as a string."""
    global _last_ms, _sequence
    with _lock:
        now = int(time.time() * 1000)
        if now < _last_ms:  # the clock went back: keep counting from the last stamp
            now = _last_ms
        if now == _last_ms:
            _sequence = (_sequence + 1) & 0xFFF
            if _sequence == 0:
                now = _last_ms = _last_ms + 1
        else:
            _sequence = 0
        _last_ms = now
        return str(((now - _EPOCH_MS) << 22) | (_worker << 12) | _sequence)
