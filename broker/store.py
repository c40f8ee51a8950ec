"""Content-addressed storage of module binaries.

Binaries are kept by sha256 so the same module uploaded twice is stored once.
The interface is small on purpose. A binary goes when no function references it
any more, in the same Redis script as the record change that released it
(broker/swap_record.lua, release_binary.lua): so the binaries live in Redis,
beside the records, and nothing here deletes one.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import redis

from wasmq.broker import keys


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ContentStore(Protocol):
    def put(self, data: bytes) -> str: ...

    def get(self, sha256: str) -> bytes | None: ...


class RedisStore:
    """The default store: binaries in the same Redis as everything else."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        self.redis.set(keys.blob(digest), data, nx=True)
        return digest

    def get(self, sha256: str) -> bytes | None:
        return self.redis.get(keys.blob(sha256))
