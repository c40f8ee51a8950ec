"""The bytes each caller keeps in the store: its storage quota (WASMQ_STORAGE_PER_CALLER_MB).

A call's input and result are counted by submit.lua and finish.lua, an upload's
module here. Usage is kept in time buckets of an eighth of the records' TTL: a
bucket expires once every record written in it has, so the sum of the last nine is
what the caller keeps now (an overestimate by at most a bucket's worth of expired
records), and no sweep is needed to forget old ones.
"""

from __future__ import annotations

import redis

from wasmq.broker import keys
from wasmq.broker.clock import now


class Usage:
    BUCKETS = 8

    def __init__(self, ttl: int) -> None:
        self.span = max(1, -(-ttl // self.BUCKETS))
        self.ttl = ttl

    def current(self, caller: str, at: float) -> tuple[str, int]:
        """The caller's bucket now, and when it expires (epoch seconds)."""
        bucket = int(at // self.span)
        return keys.usage(caller, bucket), (bucket + 1) * self.span + self.ttl

    def window(self, caller: str, at: float) -> list[str]:
        bucket = int(at // self.span)
        return [keys.usage(caller, bucket - i) for i in range(self.BUCKETS + 1)]

    def kept(self, client: redis.Redis, caller: str) -> int:
        return sum(int(v or 0) for v in client.mget(self.window(caller, now())))

    def add(self, client: redis.Redis, caller: str, nbytes: int) -> None:
        """Count what an upload stored. (An upload checks its room with `kept` first:
        concurrent uploads of one caller may pass its quota by one.)"""
        key, expire_at = self.current(caller, now())
        pipe = client.pipeline(transaction=False)
        pipe.incrby(key, nbytes)
        pipe.expireat(key, expire_at)
        pipe.execute()
