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
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench import (
    flood,
    inprocess,
    lockout,
    model,
    modules,
    report,
    storage_fill,
    versus,
    zoo,
)
from bench.floor import Floor
from bench.load import BENCH_ENV, Client, closed_loop, request_bytes
from bench.peer import Peer
from bench.stats import loadavg, machine, median_ms, ms, percentile
from tests.localstack import Stack, start_redis, start_stack
from tests.support import Api, envelope

RESULTS = Path(__file__).with_name("results.json")
MB4 = 4 * 1024 * 1024


def call_bytes(url: str, cfid: str, data: str) -> bytes:
    return request_bytes(url, f"/task/{cfid}", json.dumps(envelope(data)).encode())


def interleaved(floors: dict[str, Floor], targets: dict[str, bytes], client: Client, *,
                rounds: int, calls: int, seconds: float) -> dict[str, dict[str, float]]:
    """Floor and end-to-end figures, measured in alternating rounds.

    The machine may be shared: alternating the floor with the modules in
    short rounds exposes them to the same background load, so their ratios
    hold even when the absolute figures drift.
    """
    seq: dict[str, list[float]] = defaultdict(list)
    loaded: dict[tuple[str, int], list[float]] = defaultdict(list)
    busy: dict[tuple[str, int], float] = defaultdict(float)
    url = client.url
    for raw in targets.values():
        client.calls(raw, 30)  # warm both worker processes and the keep-alive path
    for _ in range(rounds):
        for name, floor in floors.items():
            seq[name] += floor.sequential(calls)
        for name, raw in targets.items():
            seq[name] += client.calls(raw, calls)
        for name, floor in floors.items():
            busy[(name, 0)] += floor.pipelined(10 * calls)
            loaded[(name, 0)] += [0.0] * (10 * calls)
        for name, raw in targets.items():
            for clients in (16, 64):
                lat, elapsed = closed_loop(url, raw, clients, seconds)
                loaded[(name, clients)] += lat
                busy[(name, clients)] += elapsed
    out: dict[str, dict[str, float]] = {}
    for name, lat in seq.items():
        row = out.setdefault(name, {})
        row["sequential_p50_ms"] = ms(percentile(lat, 50))
        row["sequential_p99_ms"] = ms(percentile(lat, 99))
    for (name, clients), lat in loaded.items():
        rate = round(len(lat) / busy[(name, clients)], 1)
        if clients == 0:
            out[name]["pipelined_tasks_per_s"] = rate
            continue
        out[name][f"c{clients}_tasks_per_s"] = rate
        out[name][f"c{clients}_p50_ms"] = ms(percentile(lat, 50))
        out[name][f"c{clients}_p99_ms"] = ms(percentile(lat, 99))
    return out


def cold_after_upload(api: Api, client: Client, wasm: bytes, data: str, hot: bytes,
                      reps: int) -> tuple[float, float]:
    """Median latency of the very first call to a module uploaded just before, and
    of a call to a hot module (`hot`, raw request bytes) right after an upload of
    another: the same moment, minus the new module. On a VM, cores that idled
    during the upload add the same wake-up cost to both (bare Celery pays it
    too), which the plain warm call, made back to back, does not include."""
    firsts, hots = [], []
    for _ in range(reps):
        cfid = api.deploy(modules.variant(wasm), name="bench-cold")
        firsts.append(client.calls(call_bytes(api.url, cfid, data), 1)[0])
        api.deploy(modules.variant(wasm), name="bench-cold-other")
        hots.append(client.calls(hot, 1)[0])
    return median_ms(firsts), median_ms(hots)


def cold_worker(stack: Stack, client: Client, raw: bytes, reps: int) -> tuple[float, float]:
    """First call on freshly started worker processes, and the warm calls after it."""
    firsts, warms = [], []
    for _ in range(reps):
        stack.restart_worker()
        firsts.append(client.calls(raw, 1)[0])
        warms.append(statistics.median(client.calls(raw, 30)[10:]))
    return median_ms(firsts), median_ms(warms)


def big_input(module: str) -> str:
    if module == "intsum":  # a 4 MB JSON array of integers for intsum to add up
        head, tail = '{"input": [[', "]]}"
        return head + ",".join(["1"] * ((MB4 - len(head) - len(tail)) // 2)) + tail
    return ("0123456789abcdef" * (MB4 // 16))


def against_peer(stack: Stack, api: Api, redis_url: str, workdir: Path,
                 quick: bool) -> dict:
    """wasmq beside the hand-rolled peer, on an echo module (bench/versus.py)."""
    echo = modules.echo()
    cfid = api.deploy(echo, name="bench-echo")
    body = json.dumps(envelope(modules.INPUT.decode())).encode()
    peer = Peer(redis_url, echo, workdir / "peer")
    try:
        figures = versus.versus(
            {"wasmq": (stack.url, request_bytes(stack.url, f"/task/{cfid}", body),
                       [stack.gateway.pid, stack.worker.pid]),
             "peer": (peer.url, request_bytes(peer.url, "/task/echo", body), peer.pids)},
            redis_url, rounds=3, calls=60 if quick else 150, seconds=0.7 if quick else 1.5)
    finally:
        peer.stop()
    print(versus.table(figures), flush=True)
    return figures


def run(args: argparse.Namespace) -> dict:
    seconds = 0.5 if args.quick else 1.0
    load_s = 0.5 if args.quick else 1.5
    seq_calls = 50 if args.quick else 150
    rounds = 3
    reps = 2 if args.quick else 4
    results: dict = {"machine": machine(), "modules": {}}
    wasm = {"intsum": modules.intsum(), "big": modules.big()}
    data = modules.INPUT
    for name, binary in ({} if args.peer_only else wasm).items():
        limit, runtime = inprocess.limit_and_runtime(binary, data, seconds)
        results["modules"][name] = {
            "module_bytes": len(binary), "limit_us": round(limit, 1),
            "runtime_us": round(runtime, 1), "runtime_vs_limit": round(runtime / limit, 2)}
        print(f"[bench] {name}: limit {limit:.1f} us, runtime {runtime:.1f} us", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="wasmq-bench-"))
    redis_proc, redis_url = start_redis(workdir / "redis")
    stack, floors = None, {}
    try:
        env = dict(BENCH_ENV)
        if args.max_batch is not None:
            env["WASMQ_MAX_BATCH"] = str(args.max_batch)
        if args.gateway_threads is not None:
            env["WASMQ_GATEWAY_THREADS"] = str(args.gateway_threads)
        results["max_batch"], results["gateway_threads"] = args.max_batch, args.gateway_threads
        stack = start_stack(workdir / "stack", redis_url, concurrency=2, **env)
        floors = {"floor": Floor(redis_url, workdir, events=False),
                  "floor_with_events": Floor(redis_url, workdir, events=True)}
        api = Api(stack.url)
        client = Client(stack.url)
        results["versus_peer"] = against_peer(stack, api, redis_url, workdir, args.quick)
        if args.peer_only:
            return results
        cfids = {name: api.deploy(binary, name=f"bench-{name}") for name, binary in wasm.items()}
        targets = {name: call_bytes(stack.url, cfid, data.decode())
                   for name, cfid in cfids.items()}
        figures = interleaved(floors, targets, client, rounds=rounds, calls=seq_calls,
                              seconds=load_s)
        for name in floors:
            results[name] = figures[name]
        print(f"[bench] floor: {results['floor']}", flush=True)
        for name, binary in wasm.items():
            row = results["modules"][name]
            row.update(figures[name])
            big = call_bytes(stack.url, cfids[name], big_input(name))
            row["input_4mb_ms"] = median_ms(client.calls(big, reps + 1)[1:])
            row["cold_after_upload_ms"], row["hot_after_upload_ms"] = cold_after_upload(
                api, client, binary, data.decode(), targets[name], 2 * reps)
            print(f"[bench] {name}: {row}", flush=True)
        for floor in floors.values():
            floor.stop()
        if not args.no_model:
            # The gateway's first model starts its build process cold (onnx and numpy
            # imports); a later one finds the spare that first build left ready.
            first_s = model.upload_to_ready(stack.url, seed=3)
            time.sleep(3)  # the spare's imports are done
            ready_s = model.upload_to_ready(stack.url, seed=4)
            print(f"[bench] model: ResNet-20 upload to ready {ready_s} s (the gateway's first "
                  f"model: {first_s} s)", flush=True)
            results["model"] = {"upload_to_ready_s": ready_s, "first_upload_to_ready_s": first_s}
        for name, binary in wasm.items():
            row = results["modules"][name]
            cfid = api.deploy(modules.variant(binary), name=f"bench-{name}-worker")
            raw = call_bytes(stack.url, cfid, data.decode())
            client.calls(raw, 5)  # compiled and hot, as any module in use
            first, warm = cold_worker(stack, client, raw, reps)
            row["cold_worker_first_ms"], row["cold_worker_warm_ms"] = first, warm
    finally:
        for floor in floors.values():
            floor.stop()
        if stack is not None:
            stack.stop()
        redis_proc.stop()
    results["machine"]["loadavg_end"] = loadavg()
    report.derive(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    parser.add_argument("--peer-only", action="store_true",
                        help="only wasmq beside the hand-rolled peer (written to --out)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="WASMQ_MAX_BATCH for wasmq's stack (default: its own default)")
    parser.add_argument("--gateway-threads", type=int, default=None,
                        help="WASMQ_GATEWAY_THREADS for wasmq's stack (default: its own default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--no-flood", action="store_true",
                        help="skip the flood (one client's 2,000 waiting calls)")
    parser.add_argument("--no-lockout", action="store_true",
                        help="skip the upload lockout (five keys flood builds, another uploads)")
    parser.add_argument("--no-storage-fill", action="store_true",
                        help="skip the storage fill (one key fills its quota, another calls)")
    parser.add_argument("--no-model", action="store_true",
                        help="skip the model section (a ResNet-20's build and inference "
                             "against onnxruntime)")
    parser.add_argument("--no-zoo", action="store_true",
                        help="skip the zoo CNNs' table (a few minutes; `python -m bench.model "
                             "--zoo` runs it alone)")
    parser.add_argument("--vgg", action="store_true",
                        help="the zoo table with VGG-19 too (548 MB of weights: its build "
                             "takes about 20 s and 3.5 GB)")
    args = parser.parse_args()
    results = run(args)
    if args.peer_only:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        return
    if not args.no_model:  # in this process, the stack stopped: nothing else on the cores
        results["model"] = {**model.measure(reps=15 if args.quick else 30),
                            **results.get("model", {})}
        if not args.no_zoo:
            names = [n for n in zoo.ZOO if args.vgg or n != "VGG-19"]
            web = model.ort_web()
            results["zoo"] = [model.zoo_row(n, 3 if args.quick else 5, web) for n in names]
    if not args.no_flood:
        results["flood"] = {**flood.run(2000, 8 if args.quick else 15), "load": loadavg()}
    if not args.no_lockout:
        results["lockout"] = {**lockout.run(5 if args.quick else 10), "load": loadavg()}
    if not args.no_storage_fill:
        results["storage_fill"] = {**storage_fill.run(5 if args.quick else 10),
                                   "load": loadavg()}
    print(report.table(results))
    if "model" in results:
        print("model (ResNet-20, 1x3x32x32, the worker's runtime against onnxruntime on one "
              "thread):")
        print(model.report(results["model"]))
    if "zoo" in results:
        print("zoo CNNs (random weights; per inference, median; wasmq in the worker's runtime, "
              "onnxruntime native on one thread, onnxruntime-web under node, back to back):")
        print(model.zoo_table(results["zoo"]))
    if "flood" in results:
        print(flood.report(results["flood"]))
    if "lockout" in results:
        print(lockout.report(results["lockout"]))
    if "storage_fill" in results:
        print(storage_fill.report(results["storage_fill"]))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
