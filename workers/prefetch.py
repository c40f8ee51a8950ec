"""Load each newly uploaded module in every worker process before its first task.

The gateway announces every module it stores compiled (`Uploaded`, on
`keys.UPLOADED_CHANNEL`, in the pipeline that writes the function). One thread
per pool process listens and loads the module into the process's runtime:
fetch the artifact, deserialize, link and instantiate once, which builds the
module's memory image. For a module with megabytes of data that is most of
what its first call would cost. A task for the module arriving meanwhile
waits for that load (`Runtime.prepare`) instead of loading a second copy.

What it does not do:
- run wasm: wasmtime-py allows that on one thread per process, the task's; a
  module with a start section is loaded but left for its first task to
  instantiate, and any other is instantiated only while no task runs wasm
  (see `Runtime.__init__`);
- evict: it only fills free room in the module cache, so a burst of uploads
  never pushes out the modules in use;
- compile: it only loads artifacts this engine can use; a node whose engine
  differs from the gateway's compiles on first use, as before;
- fail anything: an error is logged, and the first task loads the module.

Done with an announcement, loaded or not, it says so (`Artifacts.loaded`): the
upload waits for that, briefly, so that it answers once its first call can
run hot.
"""

from __future__ import annotations

import logging
import threading

import redis

from wasmq.broker import keys
from wasmq.broker.artifacts import Uploaded
from wasmq.broker.subscription import listen_forever
from wasmq.workers.runtime import Runtime
from wasmq.workers.warmup import NotCompiled, no_binary

log = logging.getLogger("wasmq.prefetch")


class Prefetcher:
    def __init__(self, runtime: Runtime, client: redis.Redis) -> None:
        self.runtime = runtime
        self.redis = client
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wasmq-prefetch", daemon=True)
        self._thread.start()

    def load(self, uploaded: Uploaded) -> bool:
        """True when the module was loaded now; False when it was there already
        or does not fit in the cache's free room."""
        runtime = self.runtime
        if runtime.holds(uploaded.sha256):
            return False
        if runtime.cached_bytes + uploaded.size > runtime.cache_bytes:
            log.info("not prefetched %s: %d bytes do not fit in the module cache's free room",
                     uploaded.sha256, uploaded.size)
            return False
        runtime.prepare(uploaded.sha256, no_binary, warm=not uploaded.start)
        log.info("prefetched %s (%d bytes%s)", uploaded.sha256, uploaded.size,
                 ", not instantiated: it has a start section" if uploaded.start else "")
        return True

    def _handle(self, raw: bytes) -> None:
        try:
            uploaded = Uploaded.decode(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed upload announcement: %r", raw[:200])
            return
        try:
            self.load(uploaded)
        except NotCompiled:
            log.info("not prefetched %s: no artifact for this engine", uploaded.sha256)
        except Exception as exc:  # the first task loads it, and reports what is wrong
            log.warning("prefetching %s failed: %s", uploaded.sha256, exc)
        try:
            if self.runtime.artifacts is not None:
                self.runtime.artifacts.loaded(uploaded)  # the upload may answer now
        except redis.RedisError as exc:
            log.warning("could not tell the gateway %s is loaded: %s", uploaded.sha256, exc)

    def _run(self) -> None:
        listen_forever(self.redis, keys.UPLOADED_CHANNEL, self._handle,
                       what="prefetch listener")
