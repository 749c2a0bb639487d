"""Run idempotency keys in Redis, shared by every process of the namespace.

A key is claimed with ``SET NX`` (``P runkey:<key>`` -> its request's fingerprint, the run
id it starts and when, kept ``[engine] idempotency_ttl`` seconds) before the run is sent:
a replay from any process finds the first run's id. The claim and the run are two steps,
so a start whose answer was lost leaves a claim whose run Redis may not hold; a replay
then sends that start again under the same run id (:meth:`RedisStreams.start_run` stores
a run id once), within ``run_ttl`` of the claim, while a missing run can only mean one
never stored (a stored run outlives that).
"""

from __future__ import annotations

from typing import Any

import msgspec

from wf78_core.core.runkeys import KeyedRun, RunKey

__all__ = ["RedisRunKeys"]

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(KeyedRun)


class RedisRunKeys:
    """Claims run keys in Redis under ``prefix`` (the namespace's, with its hash tag)."""

    def __init__(self, prefix: str, ttl: float) -> None:
        self.prefix = prefix + "runkey:"
        self.ttl_ms = max(1, round(ttl * 1000))

    async def claim(self, redis: Any, key: RunKey, claimed: KeyedRun) -> KeyedRun | None:
        """None when ``key`` is now claimed for ``claimed``; else the first claim, which
        the caller checks (:meth:`KeyedRun.replayed_by`)."""
        name = self.prefix + key.key
        value = _ENCODER.encode(claimed)
        while True:
            if await redis.set(name, value, nx=True, px=self.ttl_ms):
                return None
            found = await redis.get(name)
            if found is not None:
                return _DECODER.decode(found)
            # It expired between the two commands: claim it again.

    async def release(self, redis: Any, key: RunKey, claimed: KeyedRun) -> None:
        """Free ``key`` when it still holds ``claimed``: its run was surely not stored."""
        name = self.prefix + key.key
        if await redis.get(name) == _ENCODER.encode(claimed):
            await redis.delete(name)
