"""A gateway process's model builds, run as jobs: started by an upload that is
answered at once, resumed by whichever gateway finds one abandoned.

An upload takes a place among the bounded builds (`Builds.reserve`: refused at
once past the slots and WASMQ_COMPILE_QUEUE, before anything is stored), is
stored with its lease (broker/builds.py) and answered 202; the build runs in a
child process, as every build does (toolchain/build.py), on a thread that waits
for it. One keeper thread per process renews the leases of the builds it runs
(every third of WASMQ_BUILD_LEASE_S) and sweeps the pending builds (at start and
every WASMQ_BUILD_LEASE_S): one whose lease has expired was left by a gateway
that died, and is taken over while a slot is free. A build started
MAX_ATTEMPTS times without ending fails, so no record stays `building` for ever.

What a build ends with: the module (the record becomes ready and the workers are
told), a refusal in the uploader's words (the record says `failed` and why), or
an error of this gateway (Redis unreachable, say), after which its lease runs out
and the build is resumed.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable

import redis

from wasmq.broker.builds import BuildStore, PendingBuild
from wasmq.broker.connections import storage_full
from wasmq.broker.errors import InvalidModule, Unavailable, WasmqError
from wasmq.broker.registry import FunctionRecord
from wasmq.toolchain.build import Builds, Built, Reservation
from wasmq.toolchain.spool import Spooled

log = logging.getLogger("wasmq.build")

MAX_ATTEMPTS = 3
STORAGE_FULL = ("storage is full: the model was built, but the server's Redis has reached "
                "its memory limit and refused to store it; delete functions you no longer "
                "need, or ask the operator for room (WASMQ_REDIS_MAXMEMORY_MB), then upload "
                "it again")


class BuildJobs:
    def __init__(self, store: BuildStore, builds: Builds, lease_s: float) -> None:
        self.store, self.builds, self.lease_s = store, builds, lease_s
        self._held: dict[str, str] = {}  # token -> cfid, the builds this process runs
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()

    def create(self, upload: Spooled, *, caller: str = "", **fields: object) -> FunctionRecord:
        """A new function for the model `upload`, its record `building`
        (BuildsBusy past the bound, before anything is stored)."""
        return self._pend(caller, upload, lambda token, data: self.store.create(
            data, token=token, **fields))  # type: ignore[arg-type]

    def rebuild(self, cfid: str, upload: Spooled, *, limits: dict[str, float] | None,
                private: bool | None, caller: str = "") -> FunctionRecord:
        """A new model under `cfid`; its current module, if any, serves until then."""
        return self._pend(caller, upload, lambda token, data: self.store.rebuild(
            cfid, data, token=token, limits=limits, private=private))

    def _pend(self, caller: str, upload: Spooled,
              store: Callable[[str, bytes], tuple[FunctionRecord, PendingBuild]]
              ) -> FunctionRecord:
        """Take a build place for `caller`, store the build leased to a new token, and
        start it; the place is given back if storing fails. The upload is in memory
        only while it is stored (within the process's byte budget); the build reads
        it from its file. The build owns `upload` from here (it closes it)."""
        reservation = self.builds.reserve(caller)
        token = uuid.uuid4().hex
        try:
            self.builds.start_spare()  # it gets ready while the upload is stored
            with self.builds.memory.hold(upload.size):
                record, build = store(token, upload.read())
        except BaseException:
            reservation.cancel()
            upload.close()
            raise
        self._start(reservation, dataclasses.replace(build, upload=b""), token, upload)
        return record

    def start(self) -> None:
        """Renew and sweep from now on (a gateway process calls it when it starts)."""
        with self._lock:
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="wasmq-build-keeper",
                                                daemon=True)
                self._keeper.start()

    def stop(self) -> None:
        """Stop renewing, and give back the leases of the builds this process has not
        finished: they resume elsewhere now, not a lease period later."""
        self._stop.set()
        with self._lock:
            held, self._held = list(self._held.items()), {}
        for token, cfid in held:
            try:
                self.store.give_up(cfid, token)
            except redis.RedisError:
                log.warning("could not give back the build of %s; it resumes once its "
                            "lease runs out", cfid)

    def running(self) -> list[str]:
        """The cfids whose builds this process runs or has waiting for a slot."""
        with self._lock:
            return sorted(set(self._held.values()))

    def _start(self, reservation: Reservation, build: PendingBuild, token: str,
               upload: Spooled) -> None:
        with self._lock:
            self._held[token] = build.cfid
        self.start()
        reservation.start(upload, lambda built, exc: self._done(build, token, upload, built,
                                                                exc))

    def _done(self, build: PendingBuild, token: str, upload: Spooled, built: Built | None,
              exc: Exception | None) -> None:
        upload.close()
        try:
            if built is not None:
                self.store.finish(build, wasm=built.wasm, imports=built.info.imports,
                                  exports=built.info.exports, artifact=built.artifact,
                                  model=built.model)
            elif isinstance(exc, InvalidModule) or (
                    isinstance(exc, WasmqError) and not isinstance(exc, Unavailable)):
                self.store.fail(build, exc.message)
            else:
                raise exc  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - the lease runs out and the build is resumed
            if storage_full(exc):
                self._full(build)
            else:
                log.exception("the build of %s did not end; it will be resumed", build.cfid)
        finally:
            if built is not None:
                built.release()
            with self._lock:
                self._held.pop(token, None)

    def _full(self, build: PendingBuild) -> None:
        """A build whose result Redis refused for memory fails at once: resumed, it
        would be built again and refused again (three times, two minutes, issue 22)."""
        log.warning("storage is full: the build of %s ended but could not be stored",
                    build.cfid)
        try:
            self.store.fail(build, STORAGE_FULL)
        except Exception:  # noqa: BLE001 - then the lease runs out and it is resumed
            log.exception("could not record the failed build of %s", build.cfid)

    def _keep(self) -> None:
        renew_every = self.lease_s / 3
        next_sweep = 0.0  # at once: builds left by a gateway that died
        while not self._stop.is_set():
            try:
                self._renew()
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self.lease_s * random.uniform(0.8, 1.2)
            except Exception:  # noqa: BLE001 - Redis away: try again next round
                log.warning("renewing or sweeping model builds failed", exc_info=True)
            self._stop.wait(renew_every)

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for token, cfid in held:
            if not self.store.renew(cfid, token):
                # Another upload superseded it, or the function is gone: its result
                # will be dropped. Stop renewing a lease that is not ours.
                with self._lock:
                    self._held.pop(token, None)

    def sweep(self) -> int:
        """Take over the pending builds whose lease has expired, while slots are free;
        how many were taken."""
        mine = set(self.running())
        taken = 0
        for cfid in self.store.pending():
            if cfid in mine:
                continue
            try:
                reservation = self.builds.reserve()
            except WasmqError:  # every slot busy: the next sweep
                break
            token = uuid.uuid4().hex
            try:
                build = self.store.take(cfid, token)
            except BaseException:
                reservation.cancel()
                raise
            if build is None:
                reservation.cancel()
                continue
            if build.attempts > MAX_ATTEMPTS:
                reservation.cancel()
                self.store.fail(build, f"its build was started {MAX_ATTEMPTS} times and "
                                       f"never ended (the gateways running it stopped); "
                                       f"upload it again")
                continue
            log.info("resuming the build of %s (attempt %d)", cfid, build.attempts)
            upload = Spooled.of(build.upload)
            self._start(reservation, dataclasses.replace(build, upload=b""), token, upload)
            taken += 1
        return taken
