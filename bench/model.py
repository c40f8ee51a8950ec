"""`python -m bench.model`: the model toolchain's figures on a ResNet-20-sized CNN.

Builds a CIFAR ResNet-20 (1x3x32x32 input, 21 Conv with BatchNormalization,
19 Relu, 9 Add, GlobalAveragePool, Gemm; weights drawn here from a fixed seed),
times the build, then times one inference in wasmq's worker runtime (the
`Runtime` the Celery worker uses: fresh instance per call, epoch interruption
on, input as raw base64) against onnxruntime on one thread, interleaved in
the same run so both see the same machine load.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper as h
from onnx import numpy_helper

from wasmq.broker.limits import Limits
from wasmq.toolchain.model import build_model

MAX_BYTES = 256 * 1024 * 1024


def resnet20(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """A CIFAR ResNet-20 as a PyTorch export looks before BN folding."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    count = [0]

    def name(kind: str) -> str:
        count[0] += 1
        return f"{kind}{count[0]}"

    def const(array: np.ndarray) -> str:
        n = name("w")
        inits.append(numpy_helper.from_array(array.astype(np.float32), n))
        return n

    def conv_bn(x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        fan = cin * k * k
        w = const(rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan))
        c = name("conv")
        nodes.append(h.make_node("Conv", [x, w], [c], kernel_shape=[k, k],
                                 strides=[stride, stride], pads=[k // 2] * 4))
        bn = name("bn")
        nodes.append(h.make_node("BatchNormalization", [
            c, const(1 + 0.1 * rng.standard_normal(cout)), const(0.1 * rng.standard_normal(cout)),
            const(0.1 * rng.standard_normal(cout)), const(1 + 0.1 * rng.random(cout))], [bn]))
        if not relu:
            return bn
        r = name("relu")
        nodes.append(h.make_node("Relu", [bn], [r]))
        return r

    x = conv_bn("input", 3, 16, 3, 1, True)
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, cin, cout, 3, stride, True)
            y = conv_bn(y, cout, cout, 3, 1, False)
            short = x if stride == 1 and cin == cout else conv_bn(x, cin, cout, 1, stride, False)
            s = name("add")
            nodes.append(h.make_node("Add", [y, short], [s]))
            r = name("relu")
            nodes.append(h.make_node("Relu", [s], [r]))
            x, cin = r, cout
    nodes.append(h.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(h.make_node("Flatten", ["pooled"], ["flat"]))
    nodes.append(h.make_node("Gemm", ["flat", const(rng.standard_normal((classes, 64)) * 0.1),
                                      const(rng.standard_normal(classes) * 0.1)], ["logits"],
                             transB=1))
    graph = h.make_graph(nodes, "resnet20",
                         [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                   ["N", 3, 32, 32])],
                         [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT,
                                                   ["N", classes])], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def multiply_adds(model: onnx.ModelProto) -> int:
    """Multiply-adds of the Conv and Gemm nodes at a 32x32 input (for the report)."""
    shapes = {"input": (1, 3, 32, 32)}
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        x = shapes.get(node.input[0])
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            stride = [a.ints for a in node.attribute if a.name == "strides"][0][0]
            out = (x[0], w[0], x[2] // stride, x[3] // stride)
            total += int(np.prod(out)) * w[1] * w[2] * w[3]
            shapes[node.output[0]] = out
        elif node.op_type == "GlobalAveragePool":
            shapes[node.output[0]] = x[:2] + (1, 1)
        elif node.op_type == "Flatten":
            shapes[node.output[0]] = (x[0], int(np.prod(x[1:])))
        elif node.op_type == "Gemm":
            total += x[1] * inits[node.input[1]][0]
        elif x is not None:
            shapes[node.output[0]] = x
    return total


def measure(reps: int = 30, builds: int = 3) -> dict:
    import onnxruntime as ort

    from wasmq.workers.runtime import Runtime

    model = resnet20()
    data = model.SerializeToString()
    build_s = []
    for _ in range(builds):
        started = time.perf_counter()
        built = build_model(data, max_bytes=MAX_BYTES)
        build_s.append(time.perf_counter() - started)
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    body = json.dumps({"input": base64.b64encode(image.tobytes()).decode(),
                       "type": "raw"}).encode()
    runtime = Runtime()
    prepared = runtime.prepare(hashlib.sha256(built.wasm).hexdigest(), lambda: built.wasm,
                               warm=True)
    limits = Limits(timeout_s=30)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": image})[0]
    out = runtime.run(prepared, body, limits)
    got = np.array(json.loads(out.output)["output"], np.float32).reshape(want.shape)
    wasm_ms, exec_ms, ort_ms = [], [], []
    for _ in range(3):  # warm both
        runtime.run(prepared, body, limits)
        sess.run(None, {"input": image})
    for _ in range(reps):  # interleaved: both see the same load
        started = time.perf_counter()
        outcome = runtime.run(prepared, body, limits)
        wasm_ms.append((time.perf_counter() - started) * 1000)
        exec_ms.append(outcome.exec_ms)
        started = time.perf_counter()
        sess.run(None, {"input": image})
        ort_ms.append((time.perf_counter() - started) * 1000)
    wasm_med, ort_med = statistics.median(wasm_ms), statistics.median(ort_ms)
    return {
        "model": "resnet20 (1x3x32x32)",
        "multiply_adds": multiply_adds(model),
        "module_bytes": len(built.wasm),
        "build_s": round(statistics.median(build_s), 3),
        "wasmq_ms": round(wasm_med, 3),
        "wasmq_exec_ms": round(statistics.median(exec_ms), 3),
        "onnxruntime_1thread_ms": round(ort_med, 3),
        "ratio": round(wasm_med / ort_med, 2),
        # the fastest of each: on a shared machine, what the code does with the core to itself
        "wasmq_min_ms": round(min(wasm_ms), 3),
        "onnxruntime_min_ms": round(min(ort_ms), 3),
        "ratio_of_fastest": round(min(wasm_ms) / min(ort_ms), 2),
        "max_abs_diff": float(np.abs(got - want).max()),
        "same_top1": bool(got.argmax() == want.argmax()),
        "reps": reps,
        **fixed_cost(runtime),
    }


def fixed_cost(runtime: object, calls: int = 500) -> dict:
    """The fixed cost of a call in the worker runtime: a one-operator model (Relu over
    four floats) called `calls` times, each in a fresh instance (store, instance over
    the model's memory image, input parse, reply), against onnxruntime's run()."""
    import onnxruntime as ort

    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "relu",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    data = model.SerializeToString()
    built = build_model(data, max_bytes=MAX_BYTES)
    prepared = runtime.prepare(hashlib.sha256(built.wasm).hexdigest(), lambda: built.wasm,
                               warm=True)
    body, limits = b'{"input": [[1, -2, 3, -4]]}', Limits()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    feed = {"x": np.array([[1, -2, 3, -4]], np.float32)}
    wasm_ms, ort_ms = [], []
    for _ in range(5):  # rounds, interleaved; the median round
        started = time.perf_counter()
        for _ in range(calls // 5):
            runtime.run(prepared, body, limits)
        wasm_ms.append((time.perf_counter() - started) * 1000 / (calls // 5))
        started = time.perf_counter()
        for _ in range(calls // 5):
            sess.run(None, feed)
        ort_ms.append((time.perf_counter() - started) * 1000 / (calls // 5))
    return {"fixed_cost_ms": round(statistics.median(wasm_ms), 3),
            "onnxruntime_fixed_ms": round(statistics.median(ort_ms), 4)}


def upload_to_ready(url: str, timeout: float = 120.0, seed: int = 3) -> float:
    """Seconds from uploading the ResNet-20 to a gateway until its record is ready: the
    build as a job (a child process, the plan, the compile, the record, the workers told)."""
    import requests

    data = resnet20(seed=seed).SerializeToString()
    started = time.perf_counter()
    response = requests.post(f"{url}/functions", files={"file": ("resnet20.onnx", data)},
                             data={"name": "bench-resnet20"}, timeout=60)
    response.raise_for_status()
    record = response.json()
    while record["status"] == "building":
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"the ResNet-20 was still building after {timeout:g} s")
        time.sleep(0.02)
        record = requests.get(f"{url}/functions/{record['cfid']}", timeout=10).json()
    if record["status"] != "ready":
        raise RuntimeError(f"the ResNet-20's build failed: {record.get('reason')}")
    return round(time.perf_counter() - started, 3)


def ort_web() -> Path | None:
    """onnxruntime-web's node entry point: `npm install onnxruntime-web` into a cache
    folder once (WASMQ_BENCH_NPM_DIR, default ~/.cache/wasmq-bench); None without npm."""
    folder = Path(os.environ.get("WASMQ_BENCH_NPM_DIR",
                                 Path.home() / ".cache" / "wasmq-bench"))
    entry = folder / "node_modules" / "onnxruntime-web" / "dist" / "ort.node.min.mjs"
    if entry.exists():
        return entry
    if not (shutil.which("npm") and shutil.which("node")):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder),
                           "onnxruntime-web"], capture_output=True, timeout=600)
    return entry if done.returncode == 0 and entry.exists() else None


class WebSession:
    """onnxruntime-web (wasm, one thread) holding one model under node: `run()` times one
    inference, so the bench interleaves it with wasmq's and onnxruntime's own."""

    def __init__(self, entry: Path, data: bytes, image: np.ndarray) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        model, feed = Path(self.tmp.name) / "model.onnx", Path(self.tmp.name) / "input.bin"
        model.write_bytes(data)
        feed.write_bytes(np.ascontiguousarray(image, "<f4").tobytes())
        # --no-liftoff: V8's optimizing compiler from the start, so a few runs time the
        # code a browser settles on (with the baseline compiler first, runs vary 10x)
        self.proc = subprocess.Popen(
            ["node", "--no-liftoff", str(Path(__file__).with_name("ort_web.mjs")), str(entry),
             str(model), str(feed), ",".join(map(str, image.shape))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"onnxruntime-web failed: {self.proc.stderr.read()[-500:]}")

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def cpu_ms(self) -> float:
        """CPU time node's main thread (where the wasm runs, numThreads = 1) has used so
        far, from the scheduler's nanosecond count (/proc/<pid>/schedstat); 0 where
        there is none."""
        try:
            with open(f"/proc/{self.proc.pid}/schedstat") as stat:
                return int(stat.read().split()[0]) / 1e6
        except (OSError, ValueError, IndexError):
            return 0.0

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.tmp.cleanup()


def zoo_row(name: str, reps: int = 3, web: Path | None = None,
            max_bytes: int = 1 << 30) -> dict:
    """One zoo architecture: its build, then wasmq (the worker runtime, epoch interruption
    on), onnxruntime native on one thread and onnxruntime-web, one inference of each in
    turn, medians."""
    import onnxruntime as ort

    from bench.zoo import ZOO
    from wasmq.workers.runtime import Runtime

    make, shape = ZOO[name]
    data = make().SerializeToString()
    started = time.perf_counter()
    built = build_model(data, max_bytes=max_bytes)
    build_s = time.perf_counter() - started
    image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    body = json.dumps({"input": base64.b64encode(image.tobytes()).decode(),
                       "type": "raw"}).encode()
    runtime = Runtime(cache_bytes=4 << 30)
    prepared = runtime.prepare(hashlib.sha256(built.wasm).hexdigest(), lambda: built.wasm,
                               warm=True)
    limits = Limits(timeout_s=120, max_memory_mb=max_bytes / (1 << 20) + 64)
    started = time.perf_counter()
    first = runtime.run(prepared, body, limits)
    first_s = time.perf_counter() - started
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": image})[0]
    got = np.array(json.loads(first.output)["output"], np.float32).reshape(want.shape)
    browser = WebSession(web, data, image) if web is not None else None
    wasm_ms, ort_ms, web_ms, wasm_cpu, ort_cpu, web_cpu = [], [], [], [], [], []
    try:
        for _ in range(reps):  # interleaved, so that all three see the same load
            c0, t0 = time.thread_time(), time.perf_counter()
            runtime.run(prepared, body, limits)
            t1, c1 = time.perf_counter(), time.thread_time()
            sess.run(None, {"input": image})  # one thread: this one
            ort_cpu.append((time.thread_time() - c1) * 1000)
            wasm_ms.append((t1 - t0) * 1000)
            wasm_cpu.append((c1 - c0) * 1000)
            ort_ms.append((time.perf_counter() - t1) * 1000)
            if browser is not None:
                before = browser.cpu_ms()
                web_ms.append(browser.run())
                web_cpu.append(browser.cpu_ms() - before)
    finally:
        if browser is not None:
            browser.close()
    row = {"model": name, "module_mb": round(len(built.wasm) / (1 << 20), 1),
           "build_s": round(build_s, 2), "first_call_s": round(first_s, 2),
           "wasmq_ms": round(statistics.median(wasm_ms), 1),
           "native_ms": round(statistics.median(ort_ms), 1),
           # the first output (logits), against their own scale
           "max_rel_diff": float(np.abs(got - want).max() / max(1e-30, np.abs(want).max()))}
    if web_ms:
        row["web_ms"] = round(statistics.median(web_ms), 1)
        row["per_web"] = round(row["wasmq_ms"] / row["web_ms"], 2)
    if web_cpu and min(web_cpu) > 0:
        # On a loaded machine wall time counts the waits for a core; CPU time (the
        # worker's thread, node's main thread: its page faults included, its waits not)
        # compares the engines' own work. Node's counts its reading of stdin.
        row["wasmq_cpu_ms"] = round(statistics.median(wasm_cpu), 1)
        row["web_cpu_ms"] = round(statistics.median(web_cpu), 1)
        row["per_web_cpu"] = round(row["wasmq_cpu_ms"] / row["web_cpu_ms"], 2)
        row["per_native_cpu"] = round(row["wasmq_cpu_ms"] / statistics.median(ort_cpu), 2)
    row["per_native"] = round(row["wasmq_ms"] / row["native_ms"], 2)
    return row


def zoo_table(rows: list[dict]) -> str:
    """The issue's table, and the geometric mean of wasmq over native; the last two
    columns are the ratios of CPU time (see zoo_row), where node's is readable."""
    head = "| model | wasmq ms | onnxruntime native | onnxruntime-web (wasm) | wasmq / native " \
           "| wasmq / web | build s | first call s | CPU: wasmq / native | CPU: wasmq / web |"
    lines = [head, "|" + "---|" * 10]

    def x(r: dict, key: str) -> str:
        return f"{r[key]}x" if key in r else "-"

    for r in rows:
        lines.append(f"| {r['model']} | {r['wasmq_ms']} | {r['native_ms']} | "
                     f"{r.get('web_ms', '-')} | {r['per_native']}x | {x(r, 'per_web')} | "
                     f"{r['build_s']} | {r['first_call_s']} | {x(r, 'per_native_cpu')} | "
                     f"{x(r, 'per_web_cpu')} |")
    geo = float(np.exp(np.mean(np.log([r["per_native"] for r in rows]))))
    lines.append(f"geometric mean wasmq / native: {geo:.2f}x (target <= 2.5x); "
                 f"wasmq / web target <= 1.0x each")
    if all("per_native_cpu" in r for r in rows):
        geo = float(np.exp(np.mean(np.log([r["per_native_cpu"] for r in rows]))))
        lines.append(f"geometric mean of CPU time, wasmq / native: {geo:.2f}x")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The figures, one a line, and whether the issue's target holds."""
    lines = [f"{key:>24}: {value}" for key, value in result.items()]
    target = "holds" if result["ratio"] <= 4 and result["build_s"] < 2 else "missed"
    lines.append(f"{'target (<=4x, build <2 s)':>24}: {target}")
    fixed = "holds" if result["fixed_cost_ms"] <= 0.25 else "missed"
    lines.append(f"{'fixed cost (<=0.25 ms)':>24}: {fixed}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--zoo", nargs="*", metavar="MODEL",
                        help="the zoo table instead (every architecture, or those named: "
                             "ResNet-50 SqueezeNet ShuffleNet DenseNet-121 'Inception v2' "
                             "VGG-19 ResNet-20); --reps per model (3 when not given)")
    args = parser.parse_args()
    if args.zoo is not None:
        from bench.zoo import ZOO

        web = ort_web()
        reps = args.reps if args.reps != 30 else 3
        rows = []
        for name in args.zoo or list(ZOO):
            rows.append(zoo_row(name, reps, web))
            print(json.dumps(rows[-1]), flush=True)
        print(zoo_table(rows))
        return
    print(report(measure(args.reps)))


if __name__ == "__main__":
    main()
