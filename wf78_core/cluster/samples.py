"""The dashboard's history across a cluster: every process's per-second samples in Redis.

Each process of a Redis backend publishes the sample it takes every second
(:mod:`wf78_core.core.history`) into a hash per second, ``<prefix>samples:<t>``, one field
per process, kept :data:`KEEP` seconds (15 minutes and a margin, by ``EXPIRE``): nothing
to clean up, and a process that left leaves nothing behind after that. Reading the last 15
minutes is one pipeline of ``HGETALL``; the history merges the processes of each second.

The keys carry the namespace's hash tag, as every key of the backend does. The store has a
connection of its own (a few commands a second), closed when the engine stops.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from wf78_core.config import EngineSettings
from wf78_core.core.history import WINDOW, Sample, SampleStore

__all__ = ["KEEP", "RedisSamples", "store_factory"]

#: Seconds a second's samples stay in Redis.
KEEP = WINDOW + 60

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Sample)


class RedisSamples:
    """Publishes this process's samples and reads every process's, under ``prefix``."""

    def __init__(self, url: str, namespace: str) -> None:
        self.prefix = f"wf78:{{{namespace}}}:samples:"
        self.node = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        # Any: redis-py types every reply as bytes | str; this client answers bytes.
        self.redis: Any = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    async def publish(self, sample: Sample) -> None:
        key = self.prefix + str(sample.t)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, self.node, _ENCODER.encode(sample))
            pipe.expire(key, KEEP)
            await pipe.execute()

    async def fetch(self, since: int, until: int) -> dict[int, list[Sample]]:
        seconds = list(range(since + 1, until + 1))
        if not seconds:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for second in seconds:
                pipe.hgetall(self.prefix + str(second))
            replies = await pipe.execute()
        found: dict[int, list[Sample]] = {}
        for second, fields in zip(seconds, replies, strict=True):
            samples = [_decoded(raw) for raw in fields.values()]
            kept = [sample for sample in samples if sample is not None]
            if kept:
                found[second] = kept
        return found

    async def close(self) -> None:
        await self.redis.aclose()


def _decoded(raw: bytes) -> Sample | None:
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError:  # another version's sample: left out
        return None


def store_factory(settings: EngineSettings) -> Callable[[], SampleStore]:
    """How an engine with ``settings`` (redis backend) builds its store, once per start."""

    def make() -> SampleStore:
        return RedisSamples(settings.backend_url, settings.backend_namespace)

    return make
