"""The function registry: cfid -> record, and the binary it points to.

A record is one JSON value per function plus a sorted index for listing newest
first; the binary lives in the content store, shared between functions that
upload the same bytes.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field

import redis

from wasmq.broker import abi, keys
from wasmq.broker.artifacts import Artifacts, Uploaded
from wasmq.broker.clock import iso, now
from wasmq.broker.errors import BuildFailed, FunctionBuilding, NotFound
from wasmq.broker.store import ContentStore, sha256_hex


@dataclass
class FunctionRecord:
    cfid: str
    name: str
    documentation: str
    exampleinput: str
    sha256: str
    size: int
    imports: list[str]
    exports: list[str]
    createdAt: str
    updatedAt: str
    private: bool = False
    limits: dict[str, float] = field(default_factory=dict)
    kind: str = "wasm"  # "onnx": a model the build step packed into a module
    # "building" (no module yet), "ready", or "failed" (no module; `reason` says why).
    # A .wasm is built before its record exists; a model after (broker/builds.py).
    status: str = "ready"
    model: dict | None = None  # a model's inputs, outputs, operators and sizes
    reason: str = ""  # why the build failed, in the uploader's words
    # A new model uploaded over a ready function: {"status": "building" | "failed",
    # "reason"?, "startedAt"}; the current module serves until it is ready.
    build: dict | None = None
    # The Celery queue whose nodes run its calls ("": the installation's, WASMQ_QUEUE).
    queue: str = ""

    def public(self) -> dict:
        return asdict(self)

    def require_module(self) -> None:
        """Raise what a call or a download of a function without a module answers."""
        if self.status == "building":
            raise FunctionBuilding(
                f"compute function '{self.cfid}' has no module yet: the model is still "
                f"building; try again in a few seconds (GET /functions/{self.cfid} says "
                f"when it is ready)")
        if self.status == "failed":
            raise BuildFailed(
                f"compute function '{self.cfid}' has no module: the model could not be "
                f"built ({self.reason}); upload one it can build with PUT "
                f"/functions/{self.cfid}")


log = logging.getLogger("wasmq.registry")


def forget_build(pipe: redis.client.Pipeline, cfid: str) -> None:
    """Queue, in the caller's transaction, the end of `cfid`'s pending model build:
    its uploaded model, its lease and its place among the pending builds."""
    pipe.delete(keys.build(cfid), keys.build_lease(cfid))
    pipe.srem(keys.BUILDS, cfid)

# How long an upload waits for the worker processes to load its module.
LOAD_WAIT_S = 1.0


class Registry:
    def __init__(self, client: redis.Redis, store: ContentStore) -> None:
        self.redis = client
        self.store = store
        self.artifacts = Artifacts(client)

    def create(self, wasm: bytes, *, imports: list[str], exports: list[str],
               name: str = "", documentation: str = "", exampleinput: str = "",
               private: bool = False, limits: dict[str, float] | None = None,
               cfid: str | None = None, artifact: bytes | None = None, kind: str = "wasm",
               model: dict | None = None, queue: str = "") -> FunctionRecord:
        """`artifact`: the module as compiled by this process's engine, kept for workers."""
        cfid = cfid or str(uuid.uuid4())
        stamp = iso(now())
        record = FunctionRecord(
            cfid=cfid, name=name or cfid, documentation=documentation,
            exampleinput=exampleinput, sha256=sha256_hex(wasm), size=len(wasm),
            imports=imports, exports=exports, createdAt=stamp, updatedAt=stamp,
            private=private, limits=dict(limits or {}), kind=kind, model=model, queue=queue)
        uploaded = self._store_binary(cfid, wasm, artifact)
        pipe = self.redis.pipeline()
        pipe.set(keys.function(cfid), json.dumps(asdict(record)))
        pipe.zadd(keys.FUNCTIONS_INDEX, {cfid: now()})
        self._await_loaded(uploaded, self._write_and_announce(pipe, uploaded))
        return record

    def get(self, cfid: str) -> FunctionRecord:
        return self.parse(cfid, self.redis.get(keys.function(cfid)))

    @staticmethod
    def parse(cfid: str, raw: bytes | None) -> FunctionRecord:
        """A record read from `keys.function(cfid)`, here or inside a script."""
        if raw is None:
            raise NotFound(f"no compute function with cfid '{cfid}'")
        return FunctionRecord(**json.loads(raw))

    def list(self, offset: int = 0, limit: int = 50) -> tuple[list[FunctionRecord], int]:
        pipe = self.redis.pipeline()
        pipe.zrevrange(keys.FUNCTIONS_INDEX, offset, offset + limit - 1)
        pipe.zcard(keys.FUNCTIONS_INDEX)
        cfids, total = pipe.execute()
        if not cfids:
            return [], total
        raws = self.redis.mget([keys.function(c.decode()) for c in cfids])
        return [FunctionRecord(**json.loads(r)) for r in raws if r is not None], total

    def replace(self, cfid: str, wasm: bytes, *, imports: list[str], exports: list[str],
                limits: dict[str, float] | None = None, private: bool | None = None,
                artifact: bytes | None = None, kind: str = "wasm",
                model: dict | None = None, queue: str | None = None) -> FunctionRecord:
        record = self.get(cfid)
        if queue is not None:
            record.queue = queue
        record.kind, record.model = kind, model
        record.status, record.reason, record.build = "ready", "", None
        if limits is not None:
            record.limits = dict(limits)
        if private is not None:
            record.private = private
        old_sha = record.sha256
        record.sha256 = sha256_hex(wasm)
        record.size = len(wasm)
        record.imports = imports
        record.exports = exports
        record.updatedAt = iso(now()) or ""
        uploaded = self._store_binary(cfid, wasm, artifact)
        pipe = self.redis.pipeline()
        pipe.set(keys.function(cfid), json.dumps(asdict(record)))
        forget_build(pipe, cfid)  # a model still building under this cfid is dropped
        listeners = self._write_and_announce(pipe, uploaded)
        if old_sha and old_sha != record.sha256:
            self._release_binary(cfid, old_sha)
        self._await_loaded(uploaded, listeners)
        return record

    def set_queue(self, cfid: str, queue: str) -> FunctionRecord:
        """Route `cfid`'s calls to `queue` from now on (a PUT of a model: its module,
        built later, keeps the queue)."""
        key = keys.function(cfid)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    record = self.parse(cfid, pipe.get(key))
                    record.queue = queue
                    pipe.multi()
                    pipe.set(key, json.dumps(asdict(record)))
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def delete(self, cfid: str) -> None:
        record = self.get(cfid)
        pipe = self.redis.pipeline()
        pipe.delete(keys.function(cfid))
        pipe.zrem(keys.FUNCTIONS_INDEX, cfid)
        forget_build(pipe, cfid)  # a build still running finds it gone and drops its result
        pipe.execute()
        if record.sha256:
            self._release_binary(cfid, record.sha256)

    def binary(self, record: FunctionRecord) -> bytes:
        record.require_module()
        data = self.store.get(record.sha256)
        if data is None:
            raise NotFound(f"the binary of compute function '{record.cfid}' is missing")
        return data

    def _write_and_announce(self, pipe: redis.client.Pipeline,
                            uploaded: Uploaded | None) -> int:
        """Write the record and, for a module stored compiled, tell the workers:
        how many worker processes heard it."""
        if uploaded is not None:
            self.artifacts.announce(pipe, uploaded)
        listeners = pipe.execute()[-1]
        return listeners if uploaded is not None else 0

    def _await_loaded(self, uploaded: Uploaded | None, listeners: int) -> None:
        """Give the workers up to LOAD_WAIT_S to load the module, so that an upload
        answers when its first call can run hot. Best effort: the function is
        stored already, and a failure here must not make the upload look failed."""
        if uploaded is None or not listeners:
            return
        try:
            self.artifacts.await_loaded(uploaded, listeners, LOAD_WAIT_S)
        except redis.RedisError as exc:
            log.warning("not waiting for workers to load %s: %s", uploaded.sha256, exc)

    def _store_binary(self, cfid: str, wasm: bytes, artifact: bytes | None) -> Uploaded | None:
        """What to announce to the workers once the record is written, if anything."""
        # Reference first, then bytes: a concurrent release never sees zero refs
        # for a binary that is about to be used.
        self.redis.sadd(keys.blob_refs(sha256_hex(wasm)), cfid)
        digest = self.store.put(wasm)
        if artifact is None or not self.artifacts.put(digest, artifact):
            return None
        return Uploaded(digest, len(artifact), abi.runs_code_on_instantiation(wasm),
                        keys.loaded_replies(uuid.uuid4().hex))

    def _release_binary(self, cfid: str, sha256: str) -> None:
        pipe = self.redis.pipeline()
        pipe.srem(keys.blob_refs(sha256), cfid)
        pipe.scard(keys.blob_refs(sha256))
        _, remaining = pipe.execute()
        if remaining == 0:
            self.store.delete(sha256)
            self.artifacts.delete(sha256)
