"""`python -m bench.gateway_cpu`: the gateway's CPU per call under a closed loop.

Starts Redis, a gateway and a worker as the benchmark does, deploys intsum, warms
up, then drives it with `--clients` closed-loop clients (64) without a pause and
reads, at the edges of `--windows` windows of `--seconds` each (3 x 8 s), the
user+sys CPU of the gateway's process tree and of the worker's (from /proc) and
the calls answered. Prints, per window and as the median of the windows, the
gateway's and the worker's ms of CPU per call and the calls per second.

The machine may be shared: compare two versions by alternating whole runs and
taking the medians (issue 19 measured the gateway at 1.01 ms a call this way).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench import modules
from bench.__main__ import call_bytes
from bench.load import BENCH_ENV, Client, Connection, check
from bench.stats import loadavg
from bench.versus import cpu_seconds
from tests.localstack import start_redis, start_stack
from tests.support import Api


async def drive(url: str, raw: bytes, clients: int, warmup: float, windows: int,
                seconds: float, gateway: int, worker: int) -> list[dict[str, float]]:
    answered = 0
    stop = False

    async def client() -> None:
        nonlocal answered
        conn = Connection(url)
        try:
            while not stop:
                check(await conn.send(raw))
                answered += 1
        finally:
            conn.close()

    def sample() -> tuple[float, float, float, int]:
        return time.perf_counter(), cpu_seconds([gateway]), cpu_seconds([worker]), answered

    load = [asyncio.ensure_future(client()) for _ in range(clients)]
    try:
        await asyncio.sleep(warmup)
        edges = [sample()]
        for _ in range(windows):
            await asyncio.sleep(seconds)
            edges.append(sample())
    finally:
        stop = True
        await asyncio.gather(*load)
    out = []
    for (t0, g0, w0, n0), (t1, g1, w1, n1) in zip(edges, edges[1:], strict=False):
        calls = max(1, n1 - n0)
        out.append({"gateway_ms": 1000 * (g1 - g0) / calls, "worker_ms": 1000 * (w1 - w0) / calls,
                    "calls_s": calls / (t1 - t0)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cpu")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wasmq-gwcpu-"))
    redis_proc, redis_url = start_redis(workdir / "redis")
    stack = start_stack(workdir / "stack", redis_url, **BENCH_ENV)
    try:
        cfid = Api(stack.url).deploy(modules.intsum())
        raw = call_bytes(stack.url, cfid, modules.INPUT.decode())
        warm = Client(stack.url)
        warm.calls(raw, 50)
        warm.close()
        rows = asyncio.run(drive(stack.url, raw, args.clients, args.warmup, args.windows,
                                 args.seconds, stack.gateway.pid, stack.worker.pid))
    finally:
        stack.stop()
        redis_proc.stop()
    for row in rows:
        print(f"  window: gateway {row['gateway_ms']:.3f} ms/call, worker "
              f"{row['worker_ms']:.3f} ms/call, {row['calls_s']:.0f} calls/s")
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{args.label or 'median'}: gateway {med['gateway_ms']:.3f} ms/call, worker "
          f"{med['worker_ms']:.3f} ms/call, {med['calls_s']:.0f} calls/s "
          f"(load average {loadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
