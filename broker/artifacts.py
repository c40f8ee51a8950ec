"""Compiled modules, stored beside their binary: compile once, load everywhere.

The gateway compiles every upload anyway (to check it against the ABI), so it
stores `Module.serialize()` under the binary's sha256 and its engine's
fingerprint. A worker with the same fingerprint loads it with
`Module.deserialize` (about a millisecond, against many for a compile); a
worker whose fingerprint differs (another wasmtime, another CPU) compiles on
first use and stores its own, for its peers.

`Module.deserialize` trusts its input: artifacts come only from this Redis,
which anyone able to write could use to run anything anyway.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import BinaryIO

import redis
import wasmtime

from wasmq.broker import abi, chunks, keys
from wasmq.broker.connections import storage_full
from wasmq.broker.engine import fingerprint
from wasmq.broker.room import Room

log = logging.getLogger("wasmq.artifacts")

# Store an artifact only while its binary exists, so a worker compiling a
# module that is being deleted leaves nothing behind.
_PUT_IF_BINARY = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Uploaded:
    """What the gateway announces of a module it just stored compiled: enough for
    a worker process to decide, before fetching anything, whether to load it."""

    sha256: str
    size: int  # bytes of the artifact, what it costs in a module cache
    start: bool  # instantiating it runs code (see abi.runs_code_on_instantiation)
    replies: str = ""  # list each listener pushes to when done with it ("" for none)

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> "Uploaded":
        """Raises ValueError, KeyError or TypeError on anything else."""
        fields = json.loads(raw)
        return cls(str(fields["sha256"]), int(fields["size"]), bool(fields["start"]),
                   str(fields.get("replies", "")))


class Artifacts:
    """Artifacts by binary and engine fingerprint; one larger than `chunk` bytes is
    kept in parts (broker/chunks.py): fields `<fingerprint>:0`, ... of the same hash."""

    def __init__(self, client: redis.Redis, engine_fingerprint: str | None = None,
                 chunk: int = chunks.CHUNK) -> None:
        self.redis, self.chunk = client, chunk
        self.fingerprint = engine_fingerprint or fingerprint()
        self._put = client.register_script(_PUT_IF_BINARY)
        self.room = Room(client)

    def get(self, sha256: str) -> bytes | None:
        """The artifact, and the module marked hot: a worker is about to load it."""
        whole, count = self._find(sha256)
        if whole is not None or count is None:
            return whole
        return chunks.read_parts(self.redis, keys.artifacts(sha256), self.fingerprint, count)

    def get_into(self, sha256: str, out: BinaryIO) -> bytes | int | None:
        """As `get`, but an artifact stored in parts is written to `out` a part at a
        time, and its size returned: a large one is never held whole."""
        whole, count = self._find(sha256)
        if whole is not None or count is None:
            return whole
        return chunks.copy_parts(self.redis, keys.artifacts(sha256), self.fingerprint, count,
                                 out)

    def _find(self, sha256: str) -> tuple[bytes | None, int | None]:
        """The artifact stored whole, or how many parts it is in; the module marked hot."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.artifacts(sha256), self.fingerprint)
        pipe.hget(keys.artifacts(sha256), chunks.parts_field(self.fingerprint))
        pipe.zadd(keys.HOT_MODULES, {sha256: time.time()})
        whole, count, _ = pipe.execute()
        return whole, None if count is None else int(count)

    def hot(self, count: int) -> list[str]:
        """The modules workers loaded most recently, newest first."""
        return [s.decode() for s in self.redis.zrevrange(keys.HOT_MODULES, 0, count - 1)]

    def put(self, sha256: str, artifact: bytes) -> bool:
        """False when the binary is gone (deleted meanwhile): nothing whole is stored."""
        script_keys = [keys.blob(sha256), keys.artifacts(sha256)]
        self.room.take(len(artifact))
        if len(artifact) <= self.chunk:
            return bool(self._put(keys=script_keys, args=[self.fingerprint, artifact]))
        return chunks.write_parts(
            self.redis, lambda pipe, field, value: self._put(keys=script_keys,
                                                             args=[field, value], client=pipe),
            self.fingerprint, artifact, self.chunk)

    def announce(self, pipe: redis.client.Pipeline, uploaded: Uploaded) -> None:
        """Queue, in the caller's pipeline, the news that workers may load it now;
        the pipeline's result for it is how many worker processes heard it."""
        pipe.publish(keys.UPLOADED_CHANNEL, uploaded.encode())

    def await_loaded(self, uploaded: Uploaded, listeners: int, timeout: float) -> int:
        """Wait, at most `timeout` seconds, until the `listeners` worker processes
        that heard the announcement are done with it (loaded, or decided not to),
        so the first call after an upload finds the module hot. Returns how many
        answered; a busy or dead worker only makes the upload return later."""
        deadline = time.monotonic() + timeout
        answered = 0
        try:
            while answered < listeners:
                left = deadline - time.monotonic()
                if left <= 0 or self.redis.blpop([uploaded.replies], timeout=left) is None:
                    break
                answered += 1
        finally:
            try:
                self.redis.delete(uploaded.replies)
            except redis.RedisError:
                pass  # it expires: each worker's push sets a TTL
        return answered

    def loaded(self, uploaded: Uploaded) -> None:
        """A worker process is done with this announcement."""
        if uploaded.replies:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(uploaded.replies, 1)
            pipe.expire(uploaded.replies, 60)
            pipe.execute()


def load_module(engine: wasmtime.Engine, artifacts: Artifacts, sha256: str,
                fetch_wasm: Callable[[], bytes],
                map_from: int | None = None) -> tuple[wasmtime.Module, int]:
    """The module and its serialized size: deserialized when an artifact for this
    engine exists, else compiled from the binary, with the artifact stored.

    An artifact of at least `map_from` bytes is loaded from a memory file
    (see `_deserialize_mapped`), which holds a file descriptor while the
    module lives: the caller bounds how many such modules it keeps. One
    stored in parts goes into that file a part at a time, as it is read.
    """
    memory = _memory_file() if map_from is not None else None
    try:
        if memory is None or map_from is None:
            artifact: bytes | int | None = artifacts.get(sha256)
        else:
            artifact = artifacts.get_into(sha256, memory)
            if isinstance(artifact, bytes) and len(artifact) >= map_from:
                memory.write(artifact)  # whole in Redis, yet large: mapped too
                artifact = len(artifact)
            if isinstance(artifact, int):  # in the memory file
                module = _deserialize_mapped(engine, memory) if artifact >= map_from else None
                if module is not None:
                    return module, artifact
                memory.seek(0)  # small after all, or refused: from bytes
                artifact = memory.read()
        if artifact is not None:
            assert not isinstance(artifact, int)
            try:
                return wasmtime.Module.deserialize(engine, artifact), len(artifact)
            except wasmtime.WasmtimeError as exc:  # same fingerprint, yet refused: recompile
                log.warning("artifact of %s does not load here (%s); compiling", sha256, exc)
    finally:
        if memory is not None:
            memory.close()
    module = abi.compile_module(engine, fetch_wasm())
    artifact = bytes(module.serialize())
    try:
        artifacts.put(sha256, artifact)
    except redis.RedisError as exc:  # kept for other workers only when there is room
        if not storage_full(exc):
            raise
        log.warning("storage is full: %s compiled here is not kept for other workers", sha256)
    return module, len(artifact)


def _memory_file() -> BinaryIO | None:
    """A new memory file (closed by the caller), or None where there are none (not
    Linux, out of descriptors)."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        return open(os.memfd_create("wasmq-module", os.MFD_CLOEXEC), "w+b")
    except OSError:
        return None


def _deserialize_mapped(engine: wasmtime.Engine, memory: BinaryIO) -> wasmtime.Module | None:
    """The module loaded from the memory file holding the artifact; None where
    that fails (no /proc; a refused artifact is then refused again, from bytes).

    wasmtime then maps the module's code and data from the file rather than
    copying them, and builds the memory image of each new instance from that
    mapping instead of from another copy of the data segments: for a module
    with 1.5 MB of data, loading and a first instance cost about half.
    """
    try:
        memory.flush()
        # wasmtime opens its own descriptor of the file and keeps it.
        return wasmtime.Module.deserialize_file(engine, f"/proc/self/fd/{memory.fileno()}")
    except (OSError, wasmtime.WasmtimeError):
        return None
