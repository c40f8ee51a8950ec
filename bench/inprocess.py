"""The limit and the runtime: single-threaded, in this process, no queue.

wasmtime-py passes Python exceptions out of host functions through a module
global, so wasm never runs on two threads of one process: these loops run on
the main thread only.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable

import wasmtime

from wasmq.broker import abi
from wasmq.broker.engine import make_engine
from wasmq.broker.limits import Limits
from wasmq.workers.runtime import Runtime

ROUNDS = 5
U32 = 0xFFFFFFFF


def per_call_us(contenders: dict[str, Callable[[], object]],
                seconds: float) -> dict[str, float]:
    """Median over rounds of the mean time per call, the contenders taking turns
    round by round, so a noisy neighbour slows them alike and their ratio holds."""
    sizes = {}
    for name, once in contenders.items():
        once()
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < 0.05:
            once()
            calls += 1
        sizes[name] = max(10, int(calls * seconds / ROUNDS / 0.05))
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, once in contenders.items():
            t0 = time.perf_counter()
            for _ in range(sizes[name]):
                once()
            rounds[name].append((time.perf_counter() - t0) / sizes[name] * 1e6)
    return {name: statistics.median(values) for name, values in rounds.items()}


def limit_and_runtime(wasm: bytes, data: bytes, seconds: float = 1.0) -> tuple[float, float]:
    """µs per call of the limit and of the runtime, measured in alternating rounds."""
    figures = per_call_us({"limit": limit(wasm, data), "runtime": runtime(wasm, data)},
                          seconds)
    return figures["limit"], figures["runtime"]


def limit(wasm: bytes, data: bytes) -> Callable[[], bytes]:
    """Raw wasmtime-py, fresh instance per call, same engine settings as the runtime."""
    engine = make_engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    module = wasmtime.Module(engine, wasm)
    entry = next(e.name for e in module.exports if e.name in abi.ENTRY_POINTS)
    pre = linker.instantiate_pre(module)
    payload = data + b"\0"

    def once() -> bytes:
        store = wasmtime.Store(engine)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_epoch_deadline(1 << 30)
        ex = pre.instantiate(store).exports(store)
        try:
            ex[entry](store)
        except wasmtime.ExitTrap:
            pass
        memory = ex["memory"]
        ptr = ex["malloc_buffer"](store, len(payload)) & U32
        memory.write(store, payload, ptr)
        ex["pred"](store)
        n = ex["get_out_len"](store) & U32
        loc = ex["get_out_loc"](store) & U32
        out = bytes(memory.read(store, loc, loc + n))
        ex["free_buffer"](store, ptr)
        ex["free_buffer"](store, loc)
        return out

    return once


def runtime(wasm: bytes, data: bytes) -> Callable[[], object]:
    """The workers' execution path: a prepared module (LRU hit) and Runtime.run."""
    rt = Runtime()
    sha = hashlib.sha256(wasm).hexdigest()
    limits = Limits()
    rt.prepare(sha, lambda: wasm)
    return lambda: rt.run(rt.prepare(sha, lambda: wasm), data, limits)
