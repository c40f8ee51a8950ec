"""`python -m bench.model_profile [--model NAME]`: where one inference spends its time.

bench.model gives the per-inference figure; this says what it is made of. It
builds the kernels' profiling variant (`build_kernels.PROFILE_FLAGS`: each plan
instruction timed through WASI's clock), packs the bench's ResNet-20 into it and
runs it in a fresh instance per call under the worker's engine settings (epoch
interruption on), timing the phases of a call from Python as the worker makes
them. Prints the median of each phase and of each instruction, grouped by
kind and shape. Each timer reading is a call to WASI's clock, which costs tens of µs
under wasmtime's WASI on this VM: an instruction's own time holds, but `pred` as a whole
grows by about 0.15 ms an instruction (ShuffleNet's 31 ms against 15 ms unprofiled).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import wasmtime

from bench.zoo import ZOO
from wasmq.broker.engine import make_engine
from wasmq.toolchain.model import build_kernels
from wasmq.toolchain.model import program as pg
from wasmq.toolchain.model.ops import E
from wasmq.toolchain.model.planner import Builder, load
from wasmq.toolchain.model.wasmfile import Kernel

MAX_BYTES = 1 << 30
NAMES = {pg.OP_CONV: "conv", pg.OP_GEMM: "gemm", pg.OP_POOL: "pool", pg.OP_ELT: "elementwise",
         pg.OP_SOFTMAX: "softmax", pg.OP_REDUCE: "reduce", pg.OP_ARG: "argmax",
         pg.OP_GATHER: "gather", pg.OP_TREES: "trees", pg.OP_FILL: "fill"}


def label(ins: pg.Instr) -> str:
    w = ins.words
    if ins.op == pg.OP_CONV:  # N C H W M KH KW OH OW sh sw ...
        mode = " winograd" if len(w) > 28 and w[28] else ""
        groups = f" g{w[15]}" if w[15] > 1 else ""
        return (f"conv {w[1]}->{w[4]} {w[5]}x{w[6]}/{w[9]}{groups} at {w[7]}x{w[8]}{mode}")
    if ins.op == pg.OP_POOL:  # planes H W OH OW KH KW sh sw ... mode
        return f"{('max', 'avg')[w[15]]}pool {w[0]} planes {w[5]}x{w[6]}/{w[7]} at {w[3]}x{w[4]}"
    if ins.op == pg.OP_ELT:  # op inputs dtype ndims a c dims...
        name = next((k for k, v in E.items() if v == w[0]), str(w[0])).lower()
        return f"{name}{' relu' if w[4] else ''} over {'x'.join(map(str, w[6:6 + w[3]]))}"
    if ins.op == pg.OP_GEMM:
        return f"gemm {w[1]}x{w[3]} by {w[3]}x{w[2]}"
    return NAMES.get(ins.op, str(ins.op))


def packed(kernel_wasm: bytes, model: bytes) -> tuple[bytes, list[str]]:
    """`model` packed into `kernel_wasm`, and a label per instruction."""
    b = Builder(load(model), MAX_BYTES, None)
    inputs, outputs = b.run()
    k = Kernel.parse(kernel_wasm)
    blob, end = b.prog.pack(k.plan_address, inputs, outputs)
    return k.pack(blob, end, slack=1 << 20), [label(i) for i in b.prog.instrs]


def measure(reps: int, name: str = "ResNet-20", timed: bool = True
            ) -> tuple[dict[str, float], list[tuple[str, int, float]]]:
    make, shape = ZOO[name]
    return profile(make().SerializeToString(), shape, reps, timed)


def profile(model: bytes, shape: tuple[int, ...], reps: int, timed: bool = True
            ) -> tuple[dict[str, float], list[tuple[str, int, float]]]:
    """The phases of a call and the instructions of `model` (one float input of `shape`);
    `timed` False: the shipped kernels, without the instruction timers (whose clock
    calls inflate `pred`), and no instruction rows."""
    if timed:
        with tempfile.TemporaryDirectory() as tmp:
            kernel_wasm = build_kernels.build(Path(tmp) / "profile.wasm", profile=True)
    else:
        kernel_wasm = build_kernels.TARGET.read_bytes()
    wasm, labels = packed(kernel_wasm, model)
    engine = make_engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pre = linker.instantiate_pre(wasmtime.Module(engine, wasm))
    image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    body = json.dumps({"input": base64.b64encode(image.tobytes()).decode(),
                       "type": "raw"}).encode() + b"\0"
    phases: dict[str, list[float]] = defaultdict(list)
    per_instr: list[list[float]] = [[] for _ in labels]
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1 << 30)
        store.set_wasi(wasmtime.WasiConfig())
        t1 = time.perf_counter()
        ex = pre.instantiate(store).exports(store)
        memory = ex["memory"]
        ex["_initialize"](store)
        t2 = time.perf_counter()
        ptr = ex["malloc_buffer"](store, len(body)) & 0xFFFFFFFF
        memory.write(store, body, ptr)
        t3 = time.perf_counter()
        if ex["pred"](store) != 0:
            raise SystemExit("pred() failed")
        t4 = time.perf_counter()
        n, at = ex["get_out_len"](store), ex["get_out_loc"](store)
        json.loads(bytes(memory.read(store, at, at + n)))
        t5 = time.perf_counter()
        if rep < 1:  # warm-up
            continue
        for name, a, b in (("store", t0, t1), ("instantiate", t1, t2), ("write input", t2, t3),
                           ("pred", t3, t4), ("read output", t4, t5), ("total", t0, t5)):
            phases[name].append((b - a) * 1000)
        if not timed:
            continue
        base = ex["prof_ns"](store) & 0xFFFFFFFF
        ns = np.frombuffer(bytes(memory.read(store, base, base + 8 * len(labels))), "<i8")
        for i, v in enumerate(ns):
            per_instr[i].append(v / 1e6)
    summary = {k: statistics.median(v) for k, v in phases.items()}
    if not timed:
        return summary, []
    groups: dict[str, list[float]] = defaultdict(list)
    for name, times in zip(labels, per_instr, strict=True):
        groups[name].append(statistics.median(times))
    rows = sorted(((name, len(ts), sum(ts)) for name, ts in groups.items()),
                  key=lambda r: -r[2])
    return summary, rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model_profile", description=__doc__)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--phases", action="store_true",
                        help="only the phases of a call, with the shipped kernels (no timers)")
    parser.add_argument("--model", default="ResNet-20", choices=sorted(ZOO),
                        help="an architecture of bench/zoo.py (default: ResNet-20)")
    args = parser.parse_args()
    phases, rows = measure(args.reps, args.model, timed=not args.phases)
    print("per call, median ms:")
    for name, ms in phases.items():
        print(f"  {name:>12}: {ms:.3f}")
    if not rows:
        return
    total = sum(r[2] for r in rows)
    print(f"instructions, median ms (sum {total:.3f}):")
    for name, count, ms in rows:
        print(f"  {ms:7.3f}  {100 * ms / total:5.1f}%  {count:2d}x {name}")


if __name__ == "__main__":
    main()
