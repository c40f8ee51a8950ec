"""`python -m bench`: every figure of the performance issue, in one run, on this machine.

It starts its own redis-server, a bare Celery worker (the floor) and a wasmq
gateway and worker (end to end), measures, prints a table and writes
bench/results.json. Wasm runs single-threaded in this process (the limit and
the runtime) or in Celery's prefork processes, never on two threads at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import inprocess, modules, report
from bench.floor_app import QUEUE, make_floor_app
from bench.load import closed_loop, request_bytes, sequential
from bench.stats import loadavg, machine, median_ms, ms, percentile
from broker.settings import Settings
from tests.support import Api, envelope
from wasmq.localstack import Proc, child_env, start_redis, start_stack, wait_until

RESULTS = Path(__file__).with_name("results.json")
MB4 = 4 * 1024 * 1024


def floor(redis_url: str, workdir: Path, *, events: bool, sequential_calls: int,
          pipelined_calls: int) -> dict[str, float]:
    """A bare Celery task through the same Redis: round trip and pipelined rate."""
    argv = [sys.executable, "-m", "celery", "-A", "bench.floor_app", "worker", "-Q", QUEUE,
            "--concurrency", "2", "--loglevel", "WARNING", "--without-mingle",
            "-n", f"floor{int(events)}@%h"] + (["-E"] if events else [])
    worker = Proc(argv, child_env(WASMQ_REDIS_URL=redis_url), workdir / "floor.log")
    app = make_floor_app(Settings(redis_url=redis_url), events=events)
    noop = app.tasks["bench.noop"]
    try:
        wait_until(lambda: noop.delay(0).get(timeout=1) == 0, timeout=60, what="floor worker")
        for i in range(50):
            noop.delay(i).get(timeout=10)
        rtts = []
        for i in range(sequential_calls):
            started = time.perf_counter()
            noop.delay(i).get(timeout=10)
            rtts.append(time.perf_counter() - started)
        started = time.perf_counter()
        pending = [noop.delay(i) for i in range(pipelined_calls)]
        for result in pending:
            result.get(timeout=60)
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
        app.close()
    return {"sequential_p50_ms": ms(percentile(rtts, 50)),
            "sequential_p99_ms": ms(percentile(rtts, 99)),
            "pipelined_tasks_per_s": round(pipelined_calls / elapsed, 1)}


def call_bytes(url: str, cfid: str, data: str) -> bytes:
    return request_bytes(url, f"/task/{cfid}", json.dumps(envelope(data)).encode())


def end_to_end(url: str, raw: bytes, calls: int, seconds: float) -> dict[str, float]:
    sequential(url, raw, 30)  # warm both worker processes and the keep-alive path
    lat = sequential(url, raw, calls)
    out = {"sequential_p50_ms": ms(percentile(lat, 50)),
           "sequential_p99_ms": ms(percentile(lat, 99))}
    for clients in (16, 64):
        lat, elapsed = closed_loop(url, raw, clients, seconds)
        out[f"c{clients}_tasks_per_s"] = round(len(lat) / elapsed, 1)
        out[f"c{clients}_p50_ms"] = ms(percentile(lat, 50))
        out[f"c{clients}_p99_ms"] = ms(percentile(lat, 99))
    return out


def cold_after_upload(api: Api, wasm: bytes, data: str, reps: int) -> float:
    """Median latency of the very first call to a module uploaded just before."""
    firsts = []
    for _ in range(reps):
        cfid = api.deploy(modules.variant(wasm), name="bench-cold")
        firsts.append(sequential(api.url, call_bytes(api.url, cfid, data), 1)[0])
    return median_ms(firsts)


def cold_worker(stack: object, url: str, raw: bytes, reps: int) -> tuple[float, float]:
    """First call on freshly started worker processes, and the warm calls after it."""
    firsts, warms = [], []
    for _ in range(reps):
        stack.restart_worker()  # type: ignore[attr-defined]
        firsts.append(sequential(url, raw, 1)[0])
        warms.append(statistics.median(sequential(url, raw, 30)[10:]))
    return median_ms(firsts), median_ms(warms)


def big_input(module: str) -> str:
    if module == "intsum":  # a 4 MB JSON array of integers for intsum to add up
        head, tail = '{"input": [[', "]]}"
        return head + ",".join(["1"] * ((MB4 - len(head) - len(tail)) // 2)) + tail
    return ("0123456789abcdef" * (MB4 // 16))


def run(args: argparse.Namespace) -> dict:
    seconds = 0.5 if args.quick else 1.0
    load_s = 1.5 if args.quick else 4.0
    seq_calls = 150 if args.quick else 500
    reps = 2 if args.quick else 4
    results: dict = {"machine": machine(), "modules": {}}
    wasm = {"intsum": modules.intsum(), "big": modules.big()}
    data = modules.INPUT
    for name, binary in wasm.items():
        limit = inprocess.limit(binary, data, seconds)
        runtime = inprocess.runtime(binary, data, seconds)
        results["modules"][name] = {
            "module_bytes": len(binary), "limit_us": round(limit, 1),
            "runtime_us": round(runtime, 1), "runtime_vs_limit": round(runtime / limit, 2)}
        print(f"[bench] {name}: limit {limit:.1f} us, runtime {runtime:.1f} us", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="wasmq-bench-"))
    redis_proc, redis_url = start_redis(workdir / "redis")
    stack = None
    try:
        results["floor"] = floor(redis_url, workdir, events=False, sequential_calls=seq_calls,
                                 pipelined_calls=10 * seq_calls)
        results["floor_with_events"] = floor(redis_url, workdir, events=True,
                                             sequential_calls=seq_calls,
                                             pipelined_calls=10 * seq_calls)
        print(f"[bench] floor: {results['floor']}", flush=True)
        stack = start_stack(workdir / "stack", redis_url, concurrency=2)
        api = Api(stack.url)
        for name, binary in wasm.items():
            row = results["modules"][name]
            cfid = api.deploy(binary, name=f"bench-{name}")
            raw = call_bytes(stack.url, cfid, data.decode())
            row.update(end_to_end(stack.url, raw, seq_calls, load_s))
            big = call_bytes(stack.url, cfid, big_input(name))
            row["input_4mb_ms"] = median_ms(sequential(stack.url, big, reps + 1)[1:])
            row["cold_after_upload_ms"] = cold_after_upload(api, binary, data.decode(), reps)
            print(f"[bench] {name}: {row}", flush=True)
        for name, binary in wasm.items():
            row = results["modules"][name]
            cfid = api.deploy(modules.variant(binary), name=f"bench-{name}-worker")
            raw = call_bytes(stack.url, cfid, data.decode())
            sequential(stack.url, raw, 5)  # its artifact exists, as for any used module
            first, warm = cold_worker(stack, stack.url, raw, reps)
            row["cold_worker_first_ms"], row["cold_worker_warm_ms"] = first, warm
    finally:
        if stack is not None:
            stack.stop()
        redis_proc.stop()
    results["machine"]["loadavg_end"] = loadavg()
    report.derive(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()
    results = run(args)
    print(report.table(results))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
