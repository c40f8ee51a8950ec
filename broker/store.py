"""Content-addressed storage of module binaries.

Binaries are kept by sha256 so the same module uploaded twice is stored once; one
over a Redis value's limit in parts (broker/chunks.py).
The interface is small on purpose. A binary goes when no function references it
any more, in the same Redis script as the record change that released it
(broker/swap_record.lua, release_binary.lua): so the binaries live in Redis,
beside the records, and nothing here deletes one.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import redis

from wasmq.broker import chunks, keys
from wasmq.broker.room import Room

PARTS = "data"  # the name of a binary's parts: fields data:0, data:1, ..., data:parts


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class ContentStore(Protocol):
    def put(self, data: bytes | memoryview, digest: str = "") -> str: ...

    def get(self, sha256: str) -> bytes | None: ...


class RedisStore:
    """The default store: binaries in the same Redis as everything else; one larger
    than `chunk` bytes is kept in parts (broker/chunks.py), as a hash under its key."""

    def __init__(self, client: redis.Redis, chunk: int = chunks.CHUNK) -> None:
        self.redis, self.chunk = client, chunk
        self.room = Room(client)

    def put(self, data: bytes | memoryview, digest: str = "") -> str:
        """Store `data` under its sha256, `digest` when the caller has it already
        (hashing a 600 MB module takes a second: once is enough)."""
        digest = digest or sha256_hex(data)
        key = keys.blob(digest)
        self.room.take(len(data))
        if len(data) <= self.chunk:
            self.redis.set(key, data, nx=True)
            return digest
        kind = self.redis.type(key)
        if kind == b"string" or (kind == b"hash" and self.redis.hexists(
                key, chunks.parts_field(PARTS))):
            return digest  # stored whole already
        chunks.write_parts(self.redis, lambda pipe, field, value: pipe.hset(key, field, value),
                           PARTS, data, self.chunk, accepted=lambda reply: True)
        return digest

    def get(self, sha256: str) -> bytes | None:
        key = keys.blob(sha256)
        try:
            return self.redis.get(key)
        except redis.ResponseError:  # WRONGTYPE: a hash, the binary in parts
            count = self.redis.hget(key, chunks.parts_field(PARTS))
            return None if count is None else chunks.read_parts(self.redis, key, PARTS,
                                                                int(count))
