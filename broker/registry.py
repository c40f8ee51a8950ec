"""The function registry: cfid -> record, and the binary it points to.

A record is one JSON value per function plus a sorted index for listing newest
first; the binary lives in the content store, shared between functions that
upload the same bytes.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.resources import files

import redis

from wasmq.broker import abi, keys
from wasmq.broker.artifacts import Artifacts, Uploaded
from wasmq.broker.clock import iso, now
from wasmq.broker.errors import BuildFailed, FunctionBuilding, NotFound, Unavailable
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
# Record changes that lose a race with another writer of the same record this often
# give up.
ATTEMPTS = 5
SWAPPED, CHANGED, SUPERSEDED, BINARY_GONE = 1, 0, -1, -2
# Bytes of records one listing reads (and answers), fetched this many at a time.
LIST_BYTES, LIST_CHUNK = 1 << 20, 16


@cache
def _script(name: str) -> str:
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Registry:
    def __init__(self, client: redis.Redis, store: ContentStore,
                 artifacts: Artifacts | None = None) -> None:
        self.redis = client
        self.store = store
        self.artifacts = artifacts or Artifacts(client)
        self._swap = client.register_script(_script("swap_record"))
        self._release = client.register_script(_script("release_binary"))

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
        uploaded = self._store_binary(cfid, wasm, artifact, record.sha256)
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

    def list(self, offset: int = 0, limit: int = 50,
             max_bytes: int = LIST_BYTES) -> tuple[list[FunctionRecord], int]:
        """Records newest first: at most `limit`, and no more than `max_bytes` of them
        (at least one), so a listing costs bounded memory and time however large the
        records (issue 22: a listing of 201 MB; eight at once took 1.95 GB)."""
        # No MULTI: Redis refuses every command queued in one once it is over
        # maxmemory, and reads must go on working when the store is full.
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(keys.FUNCTIONS_INDEX, offset, offset + limit - 1)
        pipe.zcard(keys.FUNCTIONS_INDEX)
        cfids, total = pipe.execute()
        records: list[FunctionRecord] = []
        size = 0
        for at in range(0, len(cfids), LIST_CHUNK):
            chunk = cfids[at:at + LIST_CHUNK]
            for raw in self.redis.mget([keys.function(c.decode()) for c in chunk]):
                if raw is None:
                    continue
                size += len(raw)
                if records and size > max_bytes:
                    return records, total
                records.append(FunctionRecord(**json.loads(raw)))
        return records, total

    def replace(self, cfid: str, wasm: bytes, *, imports: list[str], exports: list[str],
                limits: dict[str, float] | None = None, private: bool | None = None,
                artifact: bytes | None = None, kind: str = "wasm",
                model: dict | None = None, queue: str | None = None) -> FunctionRecord:
        """A new module under `cfid`, in one step with the release of the old one (a
        model still building under it is dropped)."""
        def change(record: FunctionRecord) -> None:
            if queue is not None:
                record.queue = queue
            record.kind, record.model = kind, model
            record.status, record.reason, record.build = "ready", "", None
            if limits is not None:
                record.limits = dict(limits)
            if private is not None:
                record.private = private
            record.size, record.imports, record.exports = len(wasm), imports, exports
            record.updatedAt = iso(now()) or ""

        return self.install(cfid, wasm, artifact, change)

    def install(self, cfid: str, wasm: bytes, artifact: bytes | None,
                change: Callable[[FunctionRecord], None],
                build_id: str = "") -> FunctionRecord | None:
        """Store `wasm` and make it the module of `cfid`'s record, `change`d, with the
        old module released, all in one step (swap_record.lua); with `build_id`, only
        while that build is the function's (None once it is not). The binary is
        given back if the record does not take it."""
        sha = sha256_hex(wasm)
        uploaded = self._store_binary(cfid, wasm, artifact, sha)
        try:
            for _ in range(ATTEMPTS):
                raw = self.redis.get(keys.function(cfid))
                if raw is None:
                    if build_id:
                        self.release_binary(cfid, sha)
                        return None
                    raise NotFound(f"no compute function with cfid '{cfid}'")
                record = self.parse(cfid, raw)
                old_sha = record.sha256
                change(record)
                record.sha256 = sha
                done = self.swap(cfid, raw, record, build_id=build_id, forget=True,
                                 old_sha=old_sha, new_sha=sha)
                if done == SWAPPED:
                    listeners = self._announce(uploaded)
                    self._await_loaded(uploaded, listeners)
                    return record
                if done == SUPERSEDED:
                    self.release_binary(cfid, sha)
                    return None
                if done == BINARY_GONE:  # released by a writer that lost the record
                    uploaded = self._store_binary(cfid, wasm, artifact, sha)
        except BaseException:
            self.release_binary(cfid, sha)  # a full store, say: nothing left behind
            raise
        self.release_binary(cfid, sha)
        raise Unavailable(f"compute function '{cfid}' kept changing while its new module "
                          f"was stored; try again")

    def swap(self, cfid: str, expected: bytes, record: FunctionRecord | None, *,
             build_id: str = "", forget: bool = False, old_sha: str = "",
             new_sha: str = "") -> int:
        """swap_record.lua: SWAPPED, CHANGED, SUPERSEDED or BINARY_GONE."""
        if old_sha == new_sha:
            old_sha = new_sha = ""  # the same binary: its reference stays as it is
        return int(self._swap(
            keys=[keys.function(cfid), keys.FUNCTIONS_INDEX, keys.build(cfid),
                  keys.build_lease(cfid), keys.BUILDS, keys.blob_refs(old_sha),
                  keys.blob(old_sha), keys.artifacts(old_sha), keys.HOT_MODULES,
                  keys.blob_refs(new_sha), keys.blob(new_sha)],
            args=[expected, "" if record is None else json.dumps(asdict(record)), cfid,
                  build_id, "1" if forget else "0", old_sha, new_sha, ""]))

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
        """The record, its pending build (a build still running finds it gone and drops
        its result) and its binary, once no other function uses it: one step."""
        for _ in range(ATTEMPTS):
            raw = self.redis.get(keys.function(cfid))
            record = self.parse(cfid, raw)
            if self.swap(cfid, raw, None, forget=True, old_sha=record.sha256) == SWAPPED:
                return
        raise Unavailable(f"compute function '{cfid}' kept changing while it was deleted; "
                          f"try again")

    def binary(self, record: FunctionRecord) -> bytes:
        record.require_module()
        data = self.store.get(record.sha256)
        if data is None:
            raise NotFound(f"the binary of compute function '{record.cfid}' is missing")
        return data if isinstance(data, bytes) else bytes(data)  # read in parts: a bytearray

    def _write_and_announce(self, pipe: redis.client.Pipeline,
                            uploaded: Uploaded | None) -> int:
        """Write the record and, for a module stored compiled, tell the workers:
        how many worker processes heard it."""
        if uploaded is not None:
            self.artifacts.announce(pipe, uploaded)
        listeners = pipe.execute()[-1]
        return listeners if uploaded is not None else 0

    def _announce(self, uploaded: Uploaded | None) -> int:
        if uploaded is None:
            return 0
        return self._write_and_announce(self.redis.pipeline(transaction=False), uploaded)

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

    def _store_binary(self, cfid: str, wasm: bytes, artifact: bytes | None,
                      sha: str) -> Uploaded | None:
        """What to announce to the workers once the record is written, if anything;
        `sha` is the sha256 of `wasm`, which the caller has (hashed once)."""
        # Reference first, then bytes: a concurrent release never sees zero refs
        # for a binary that is about to be used.
        self.redis.sadd(keys.blob_refs(sha), cfid)
        digest = self.store.put(wasm, sha)
        if artifact is None or not self.artifacts.put(digest, artifact):
            return None
        return Uploaded(digest, len(artifact), abi.runs_code_on_instantiation(wasm),
                        keys.loaded_replies(uuid.uuid4().hex))

    def release_binary(self, cfid: str, sha256: str) -> None:
        """Give back the reference `cfid` took on a binary its record does not use
        (release_binary.lua); the binary goes once nothing references it."""
        self._release(keys=[keys.function(cfid), keys.blob_refs(sha256), keys.blob(sha256),
                            keys.artifacts(sha256), keys.HOT_MODULES], args=[cfid, sha256])
