"""Model builds that outlive the request that asked for them, kept in Redis.

An ONNX upload is answered before it is built (api/functions.py): building a model
is untrusted work of up to WASMQ_COMPILE_TIMEOUT seconds, which no request thread
should wait for. Its record says `building` (or, over a function that has a module
already, `build: {"status": "building"}` while the old module serves), and what
finishing it needs is kept where any gateway can find it: the uploaded model and
the build's id in `keys.build(cfid)`, the cfid in `keys.BUILDS`, and a lease,
`keys.build_lease(cfid)`, holding the token of the gateway process running it,
which that process renews. A gateway that dies mid-build stops renewing; once the
lease has expired any gateway takes the build over (toolchain/jobs.py).

Every write that ends a build checks, in the same script that writes
(broker/swap_record.lua), that the build is still the function's current one: a
function deleted or uploaded again meanwhile drops the result, and the uploaded
model is deleted with the pending build.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from importlib.resources import files

import redis

from wasmq.broker import chunks, keys
from wasmq.broker.clock import iso, now
from wasmq.broker.errors import Unavailable, cut_reason
from wasmq.broker.registry import (
    ATTEMPTS,
    SUPERSEDED,
    SWAPPED,
    FunctionRecord,
    Registry,
    forget_build,
)
from wasmq.broker.room import Room

log = logging.getLogger("wasmq.builds")



@dataclass(frozen=True)
class PendingBuild:
    """One build of a model under `cfid`, as any gateway can resume it (its upload in
    parts in `keys.build(cfid)` when over a Redis value's limit: broker/chunks.py)."""

    cfid: str
    id: str  # the same across resumptions; a new upload makes a new one
    upload: bytes  # the model as uploaded
    attempts: int  # how many gateway processes have started it
    limits: dict[str, float] | None = None  # applied with the new module (a PUT's)
    private: bool | None = None


class BuildStore:
    def __init__(self, registry: Registry, lease_s: float, chunk: int = chunks.CHUNK) -> None:
        self.registry, self.chunk = registry, chunk
        self.redis = registry.redis
        self._put_part = self.redis.register_script(
            files(__package__).joinpath("put_build_part.lua").read_text(encoding="utf-8"))
        self.lease_ms = max(1, int(lease_s * 1000))
        self.room = Room(self.redis)

    def create(self, upload: bytes, *, token: str, name: str = "", documentation: str = "",
               exampleinput: str = "", private: bool = False,
               limits: dict[str, float] | None = None,
               queue: str = "") -> tuple[FunctionRecord, PendingBuild]:
        """A new function whose module is this model, once built: its record says
        `building`, and the build is leased to `token`."""
        cfid = str(uuid.uuid4())
        stamp = iso(now())
        record = FunctionRecord(
            cfid=cfid, name=name or cfid, documentation=documentation,
            exampleinput=exampleinput, sha256="", size=0, imports=[], exports=[],
            createdAt=stamp, updatedAt=stamp, private=private, limits=dict(limits or {}),
            kind="onnx", status="building", queue=queue)
        build = PendingBuild(cfid, uuid.uuid4().hex, upload, 1)
        self.room.take(len(upload))
        pipe = self.redis.pipeline()
        pipe.set(keys.function(cfid), json.dumps(asdict(record)))
        pipe.zadd(keys.FUNCTIONS_INDEX, {cfid: now()})
        self._pend(pipe, build, token)
        pipe.execute()
        self._put_parts(build)
        return record, build

    def rebuild(self, cfid: str, upload: bytes, *, token: str,
                limits: dict[str, float] | None = None,
                private: bool | None = None) -> tuple[FunctionRecord, PendingBuild]:
        """A new model for an existing function. A function with a module keeps
        serving it, its record showing the pending build; one without (building or
        failed) is building again. A build already pending is superseded."""
        build = PendingBuild(cfid, uuid.uuid4().hex, upload, 1, limits, private)
        self.room.take(len(upload))
        for _ in range(ATTEMPTS):
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(keys.function(cfid))
                    record = Registry.parse(cfid, pipe.get(keys.function(cfid)))
                    if record.status == "ready":
                        record.build = {"status": "building", "startedAt": iso(now())}
                    else:
                        record.status, record.reason, record.build = "building", "", None
                        record.updatedAt = iso(now()) or ""
                    pipe.multi()
                    pipe.set(keys.function(cfid), json.dumps(asdict(record)))
                    self._pend(pipe, build, token)
                    pipe.execute()
                    self._put_parts(build)
                    return record, build
                except redis.WatchError:
                    continue
        raise Unavailable(f"compute function '{cfid}' kept changing while its new model "
                          f"was stored; try again")

    def _pend(self, pipe: redis.client.Pipeline, build: PendingBuild, token: str) -> None:
        fields = {"id": build.id, "attempts": build.attempts,
                  "limits": "" if build.limits is None else json.dumps(build.limits),
                  "private": "" if build.private is None else str(int(build.private))}
        if len(build.upload) <= self.chunk:
            fields["upload"] = build.upload  # else in parts, once pended: `_put_parts`
        pipe.delete(keys.build(build.cfid))
        pipe.hset(keys.build(build.cfid), mapping=fields)
        pipe.sadd(keys.BUILDS, build.cfid)
        pipe.set(keys.build_lease(build.cfid), token, px=self.lease_ms)

    def _put_parts(self, build: PendingBuild) -> None:
        """An upload over a part's size, written in parts after the transaction that
        pended its build (broker/put_build_part.lua); until its count is written the
        build has no upload, which only a gateway taking over its lease could see."""
        if len(build.upload) <= self.chunk:
            return
        key = keys.build(build.cfid)
        chunks.write_parts(
            self.redis, lambda pipe, field, value: self._put_part(
                keys=[key], args=[build.id, field, value], client=pipe),
            "upload", build.upload, self.chunk)

    def pending(self) -> list[str]:
        """The cfids with a build pending, leased or not."""
        return sorted(c.decode() for c in self.redis.smembers(keys.BUILDS))

    def take(self, cfid: str, token: str) -> PendingBuild | None:
        """The pending build of `cfid`, leased to `token`, if its lease had expired
        (its gateway died or gave it up); None if someone holds it or it is over."""
        if not self.redis.set(keys.build_lease(cfid), token, nx=True, px=self.lease_ms):
            return None
        # Watched: a new upload may pend a build meanwhile (its own lease then replaces
        # this one), which must be neither counted as this attempt nor forgotten.
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(keys.build(cfid))
                over = not pipe.hexists(keys.build(cfid), "id")
                pipe.multi()
                if over:
                    forget_build(pipe, cfid)
                else:
                    pipe.hincrby(keys.build(cfid), "attempts", 1)
                    pipe.hgetall(keys.build(cfid))
                replies = pipe.execute()
            except redis.WatchError:
                return None
        if over:
            return None
        fields = replies[-1]
        limits, private = fields.get(b"limits", b""), fields.get(b"private", b"")
        upload = chunks.from_fields(fields, "upload")
        build = PendingBuild(cfid, fields[b"id"].decode(), upload or b"",
                             int(fields[b"attempts"]),
                             json.loads(limits) if limits else None,
                             bool(int(private)) if private else None)
        if upload is None:  # its gateway lost Redis while it wrote the parts
            self.fail(build, "its upload was not stored whole (the gateway that received "
                             "it lost Redis meanwhile); upload it again")
            return None
        return build

    def give_up(self, cfid: str, token: str) -> None:
        """End the lease `token` holds, if it still does: a gateway that stops lets the
        next sweep (a restarted gateway's, at once) resume the build."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(keys.build_lease(cfid))
                if pipe.get(keys.build_lease(cfid)) == token.encode():
                    pipe.multi()
                    pipe.delete(keys.build_lease(cfid))
                    pipe.execute()
            except redis.WatchError:
                pass  # taken over meanwhile: not ours to end

    def renew(self, cfid: str, token: str) -> bool:
        """Extend the lease while `token` holds it; False once it does not."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(keys.build_lease(cfid))
                if pipe.get(keys.build_lease(cfid)) != token.encode():
                    return False
                pipe.multi()
                pipe.pexpire(keys.build_lease(cfid), self.lease_ms)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def finish(self, build: PendingBuild, *, wasm: bytes | memoryview, imports: list[str],
               exports: list[str], artifact: bytes | bytearray | memoryview | None,
               model: dict | None) -> FunctionRecord | None:
        """Make the built module the function's, workers told as for any upload, in
        one step with the end of the build and the release of the old module; None
        when the build is no longer the function's current one. The model's
        description says how long storing the module and its artifact took (`storeMs`,
        beside the build's `planMs`, `compileMs` and `buildMs`): seconds for a big one."""
        started = time.perf_counter()

        def change(record: FunctionRecord) -> None:
            record.size, record.imports, record.exports = len(wasm), imports, exports
            record.kind, record.model = "onnx", model
            if model is not None:
                record.model = {**model,
                                "storeMs": round((time.perf_counter() - started) * 1000)}
            record.status, record.reason, record.build = "ready", "", None
            record.updatedAt = iso(now()) or ""
            if build.limits is not None:
                record.limits = dict(build.limits)
            if build.private is not None:
                record.private = build.private

        return self.registry.install(build.cfid, wasm, artifact, change, build_id=build.id)

    def fail(self, build: PendingBuild, reason: str) -> FunctionRecord | None:
        """Record why the build failed: a function with a module keeps serving it;
        None when the build is no longer the function's current one. One step, which
        Redis lets through when it is full (swap_record.lua)."""
        reason = cut_reason(reason)
        for _ in range(ATTEMPTS):
            raw = self.redis.get(keys.function(build.cfid))
            if raw is None:
                return None
            record = Registry.parse(build.cfid, raw)
            if record.status == "ready":
                record.build = {"status": "failed", "reason": reason,
                                "finishedAt": iso(now())}
            else:
                record.status, record.reason = "failed", reason
            done = self.registry.swap(build.cfid, raw, record, build_id=build.id, forget=True)
            if done == SWAPPED:
                return record
            if done == SUPERSEDED:
                return None
        raise Unavailable(f"compute function '{build.cfid}' kept changing while its build "
                          f"failed")

