"""Make a new worker process warm before it takes its first task.

A fresh process pays for more than its modules: wasmtime sets up its trap
handling and per-thread state on the first instance, redis-py opens its first
connection and loads its scripts. Running a tiny module once and loading the
record scripts moves all of that before the first task. Then the
modules workers loaded most recently (the hot set) are loaded from their
compiled artifacts and instantiated once, which builds each module's
copy-on-write memory image, within a byte and time budget.
"""

from __future__ import annotations

import logging
import time

import wasmtime

from wasmq.broker.limits import Limits
from wasmq.broker.protocol.queue import TaskQueue
from wasmq.workers.runtime import Runtime

log = logging.getLogger("wasmq.warmup")

# The smallest module the ABI allows; it echoes its input.
PROBE_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "_start"))
  (func (export "malloc_buffer") (param i32) (result i32) (i32.const 16))
  (func (export "free_buffer") (param i32))
  (func (export "pred") (result i32) (i32.const 0))
  (func (export "get_out_len") (result i32) (i32.const 4))
  (func (export "get_out_loc") (result i32) (i32.const 16)))
"""
PROBE_KEY = "warmup-probe"
HOT_COUNT = 64
BUDGET_S = 2.0


class NotCompiled(Exception):
    """A module without an artifact for this engine: not worth compiling ahead."""


def no_binary() -> bytes:
    """The `load` for `Runtime.prepare` that accepts a stored artifact only."""
    raise NotCompiled


def warm_up(runtime: Runtime, tasks: TaskQueue, preload_bytes: int) -> None:
    runtime.run(runtime.prepare(PROBE_KEY, lambda: bytes(wasmtime.wat2wasm(PROBE_WAT))),
                b"warm", Limits(timeout_s=1))
    runtime.forget(PROBE_KEY)
    tasks.load_scripts()
    if runtime.artifacts is None:
        return
    deadline = time.monotonic() + BUDGET_S
    loaded = 0
    for sha in runtime.artifacts.hot(HOT_COUNT):
        if time.monotonic() > deadline or runtime.cached_bytes >= preload_bytes:
            break
        try:
            runtime.prepare(sha, no_binary, warm=True)
            loaded += 1
        except NotCompiled:
            continue
        except Exception as exc:  # a module that no longer loads fails its own tasks later
            log.warning("preloading %s failed: %s", sha, exc)
    log.info("warm: %d hot modules preloaded (%d bytes)", loaded, runtime.cached_bytes)
