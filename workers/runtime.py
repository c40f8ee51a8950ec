"""The ABI driver: instantiate, `_start`, write input, `pred`, read output, free.

One `Runtime` per worker process holds the engine, the linker (both WASI
namespaces) and the hot modules (an LRU of pre-instantiated modules, bounded
by their compiled size in bytes); every task gets a fresh Store and instance,
so nothing leaks between calls. All limits are applied here.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import wasmtime

from wasmq.broker import abi
from wasmq.broker.artifacts import Artifacts, load_module
from wasmq.broker.causes import Cause
from wasmq.broker.engine import EPOCH_TICK_S, make_engine
from wasmq.broker.errors import TaskFailed
from wasmq.broker.limits import Limits
from wasmq.workers.hostctx import (
    CURRENT,
    HostContext,
    HostLimitExceeded,
    ModuleExit,
    OutOfTime,
)
from wasmq.workers.traps import describe, memory_hint
from wasmq.workers.wasi_poll import define_bounded_poll
from wasmq.workers.wasi_unstable import define_missing_stubs, define_wasi_unstable

U32 = 0xFFFFFFFF
# Per-store caps on what a module may declare besides linear memory: tables
# are host memory too (8 bytes an element), and one instance with one memory
# is all the ABI needs, so a second memory cannot double the memory limit.
TABLE_ELEMENTS = 1_000_000
# Large modules are loaded from memory files (broker/artifacts.py), one file
# descriptor each while cached: the size from which they are is chosen so that
# a full cache holds at most this many.
MAX_MAPPED_MODULES = 256


@dataclass
class Outcome:
    output: bytes
    stdout: str
    stderr: str
    exec_ms: float


class ModuleFailed(TaskFailed):
    """The module failed its task; the logs it wrote so far travel with it."""

    def __init__(self, message: str, ctx: HostContext, cause: Cause) -> None:
        super().__init__(message, cause)
        self.stdout = ctx.stdout.text()
        self.stderr = ctx.stderr.text()


@dataclass
class Prepared:
    pre: wasmtime.InstancePre
    entry: str
    size: int


class Runtime:
    def __init__(self, cache_bytes: int = 256 * 1024 * 1024,
                 artifacts: Artifacts | None = None) -> None:
        """With `artifacts`, modules are loaded compiled (and compiled ones stored)."""
        self.engine = make_engine()
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        define_bounded_poll(self.linker)
        define_wasi_unstable(self.linker)
        self.cache_bytes = cache_bytes
        self.artifacts = artifacts
        self.map_from = max(1024 * 1024, cache_bytes // MAX_MAPPED_MODULES)
        self._cache: OrderedDict[str, Prepared] = OrderedDict()
        self._cached = 0
        # The task thread and the prefetch thread (workers/prefetch.py) share the
        # cache: `_lock` guards it and `_loading`; the linker is changed under
        # `_link_lock`, the only step two loads of different modules cannot share.
        self._lock = threading.Lock()
        self._link_lock = threading.Lock()
        self._loading: dict[str, threading.Event] = {}
        # wasmtime-py hands a host function's exception back through one module
        # global, which any failed call into wasmtime reads: an instantiation
        # failing on the prefetch thread could take a running task's exception
        # (its time limit, its exit code). So calls into wasm never overlap.
        self._wasm_lock = threading.Lock()
        self._ticker = threading.Thread(target=self._tick, name="wasmq-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        # Epoch interruption: the store's deadline counts these ticks.
        while True:
            time.sleep(EPOCH_TICK_S)
            self.engine.increment_epoch()

    def prepare(self, sha256: str, load: Callable[[], bytes], *,
                warm: bool = False) -> Prepared:
        """The module from the per-process LRU, or loaded, linked and cached.

        `load` fetches the binary; it is called only when no compiled artifact
        for this engine exists. With `warm`, a module this call loads is
        instantiated once (see `warm`) before anyone else may use it. A call
        for a module another thread is loading waits for that load instead of
        loading a second copy.
        """
        while True:
            with self._lock:
                hit = self._cache.get(sha256)
                if hit is not None:
                    self._cache.move_to_end(sha256)
                    return hit
                pending = self._loading.get(sha256)
                if pending is None:
                    pending = self._loading[sha256] = threading.Event()
                    break
            pending.wait()  # then look again: that load may have failed
        try:
            prepared = self._load(sha256, load)
            if warm:
                self.warm(prepared)
            with self._lock:
                self._cache[sha256] = prepared
                self._cached += prepared.size
                while self._cached > self.cache_bytes and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cached -= old.size
            return prepared
        finally:
            with self._lock:
                del self._loading[sha256]
            pending.set()

    def _load(self, sha256: str, load: Callable[[], bytes]) -> Prepared:
        if self.artifacts is not None:
            module, size = load_module(self.engine, self.artifacts, sha256, load,
                                       self.map_from)
        else:
            module = abi.compile_module(self.engine, load())
            size = len(module.serialize())
        info = abi.inspect_module(module)
        with self._link_lock:
            define_missing_stubs(self.linker, module)
            try:
                pre = self.linker.instantiate_pre(module)
            except wasmtime.WasmtimeError as exc:  # e.g. a WASI import with the wrong signature
                reason = str(exc).strip().splitlines()[0]
                raise TaskFailed(f"module cannot be linked against WASI: {reason}",
                                 Cause.ABI) from None
        return Prepared(pre, info.entry, size)

    def cached(self) -> dict[str, int]:
        """sha256 -> compiled size of each hot module, least recently used first."""
        with self._lock:
            return {sha: p.size for sha, p in self._cache.items()}

    def holds(self, sha256: str) -> bool:
        return sha256 in self._cache

    @property
    def cached_bytes(self) -> int:
        return self._cached

    def forget(self, sha256: str) -> None:
        with self._lock:
            old = self._cache.pop(sha256, None)
            if old is not None:
                self._cached -= old.size

    def warm(self, prepared: Prepared) -> None:
        """Instantiate once, running nothing the ABI asks for: wasmtime builds the
        module's memory image on its first instance, so a task does not have to.

        A module with a start section runs it here: only the thread that runs
        tasks may warm such a module (see `abi.runs_code_on_instantiation`).
        """
        store = wasmtime.Store(self.engine)
        store.set_limits(table_elements=TABLE_ELEMENTS, instances=1, memories=1)
        store.set_epoch_deadline(max(1, int(1.0 / EPOCH_TICK_S)))
        store.set_wasi(wasmtime.WasiConfig())
        token = CURRENT.set(HostContext())
        try:
            with self._wasm_lock:
                prepared.pre.instantiate(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError, ModuleExit):
            pass  # a module that does not instantiate fails its tasks, with a message
        finally:
            CURRENT.reset(token)

    def run(self, prepared: Prepared, data: bytes, limits: Limits) -> Outcome:
        with self._wasm_lock:  # see __init__
            return self._run(prepared, data, limits)

    def _run(self, prepared: Prepared, data: bytes, limits: Limits) -> Outcome:
        ctx = HostContext(deadline=time.monotonic() + limits.timeout_s)
        token = CURRENT.set(ctx)
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=limits.max_memory, table_elements=TABLE_ELEMENTS,
                         instances=1, memories=1)
        store.set_epoch_deadline(max(1, int(limits.timeout_s / EPOCH_TICK_S)))
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = ctx.stdout.write
        wasi.stderr_custom = ctx.stderr.write
        store.set_wasi(wasi)
        started = time.perf_counter()
        phase = "instantiate"
        memory: wasmtime.Memory | None = None
        try:
            instance = prepared.pre.instantiate(store)
            ex = instance.exports(store)
            memory = ex[abi.MEMORY]  # type: ignore[assignment]
            phase = prepared.entry
            _call_entry(ex[prepared.entry], store)
            phase = "malloc_buffer"
            size = len(data) + 1
            ptr = ex["malloc_buffer"](store, size) & U32
            if ptr == 0 or ptr + size > memory.data_len(store):
                raise _AbiViolationError(f"malloc_buffer({size}) returned {ptr:#x}, which is "
                                         f"not a usable buffer in {memory.data_len(store)} "
                                         f"bytes of memory", Cause.ABI)
            memory.write(store, data, ptr)  # no copy of a large input to append the NUL
            memory.write(store, b"\0", ptr + len(data))
            phase = "pred"
            rc = ex["pred"](store)
            if rc != 0:
                tail = ctx.stderr.text()[-500:].strip()
                raise _AbiViolationError(f"pred() returned {rc} (failure)"
                                         + (f"; module stderr: {tail}" if tail else ""),
                                         Cause.PRED_FAILED)
            phase = "get_out_len"
            out_len = ex["get_out_len"](store) & U32
            phase = "get_out_loc"
            out_loc = ex["get_out_loc"](store) & U32
            if out_len > limits.max_output:
                raise ModuleFailed(f"output of {out_len} bytes exceeds the output limit of "
                                   f"{limits.max_output_mb:g} MB", ctx, Cause.OUTPUT_LIMIT)
            mem_len = memory.data_len(store)
            if out_loc + out_len > mem_len:
                raise _AbiViolationError(f"output location {out_loc:#x} with length {out_len} "
                                         f"lies outside linear memory ({mem_len} bytes)",
                                         Cause.ABI)
            output = bytes(memory.read(store, out_loc, out_loc + out_len))
            phase = "free_buffer"
            ex["free_buffer"](store, ptr)
            if out_len and out_loc != ptr:
                ex["free_buffer"](store, out_loc)
        except OutOfTime as exc:
            where = f" in {exc.call}" if exc.call else ""
            asked = (f" (the module asked to wait {exc.asked_s:g} s)"
                     if exc.asked_s is not None else "")
            raise ModuleFailed(f"time limit of {limits.timeout_s:g} s exceeded during "
                               f"{phase}(){where}{asked}", ctx, Cause.TIMEOUT) from None
        except HostLimitExceeded as exc:
            raise ModuleFailed(f"module refused during {phase}(): {exc}", ctx,
                               Cause.HOST_LIMIT) from None
        except (_AbiViolationError, ModuleExit, wasmtime.ExitTrap) as exc:
            if isinstance(exc, _AbiViolationError):
                text, cause = str(exc), exc.cause
            else:
                text, cause = f"module exited with code {exc.code} during {phase}()", Cause.EXIT
            hint = memory_hint(_size(memory, store), limits)
            raise ModuleFailed(text + hint, ctx, Cause.MEMORY if hint else cause) from None
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            failure = describe(exc, phase, limits, _size(memory, store), TABLE_ELEMENTS)
            raise ModuleFailed(failure.message, ctx, failure.cause) from None
        finally:
            CURRENT.reset(token)
        return Outcome(output, ctx.stdout.text(), ctx.stderr.text(),
                       (time.perf_counter() - started) * 1000)


class _AbiViolationError(Exception):
    """The module broke the ABI contract (bad pointer, length, return code)."""

    def __init__(self, message: str, cause: Cause) -> None:
        super().__init__(message)
        self.cause = cause


def _size(memory: wasmtime.Memory | None, store: wasmtime.Store) -> int | None:
    return memory.data_len(store) if memory is not None else None


def _call_entry(func: wasmtime.Func, store: wasmtime.Store) -> None:
    """`_start` may end by exiting with 0 (wasi-libc does); only non-zero fails."""
    try:
        func(store)
    except wasmtime.ExitTrap as exc:
        if exc.code != 0:
            raise
    except ModuleExit as exc:
        if exc.code != 0:
            raise
