"""`python -m bench.soak [--minutes 10] [--rate R]`: a steady load of checked calls, for a while.

What a short benchmark cannot show: memory that creeps up call after call, a
connection or a record that is never let go, an answer that goes wrong after
the hundred-thousandth call. The stack is started the way `python -m bench`
starts one (its own redis-server, a gateway, a worker with two processes);
calls are sent at a fixed rate (an open loop: a slow answer does not slow the
sending) over a pool of keep-alive connections, each call adding two numbers
it chose with intsum and checking the sum. Every few seconds the RSS of every
process (gateway, worker, Redis, with their children) and Redis's own
`used_memory` are sampled. It prints answered right / sent, latency
percentiles, and each part's memory growth from the first fifth of the run to
the last (the means of the samples in each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from bench import modules
from bench.load import BENCH_ENV, Connection, request_bytes
from bench.stats import ms, percentile, run_async
from tests.localstack import start_redis, start_stack
from tests.support import Api, envelope
from wasmq.process import Child

CONNECTIONS = 32
# Records are kept this long in the soak (the default is a day): Redis then holds
# a steady number of them, so its memory says something about leaks too.
RESULT_TTL_S = 60


@dataclass
class Tally:
    sent: int = 0
    right: int = 0
    wrong: list[str] = field(default_factory=list)  # the first few, to show
    late: int = 0  # calls sent after their slot because every connection was busy
    latencies: list[float] = field(default_factory=list)

    def fail(self, why: str) -> None:
        if len(self.wrong) < 5:
            self.wrong.append(why)


def rss(proc: Child) -> int:
    """Resident bytes of a process and all of its children."""
    try:
        root = psutil.Process(proc.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


class Sampler(threading.Thread):
    def __init__(self, parts: dict[str, Child], client: redis.Redis, every: float) -> None:
        super().__init__(daemon=True)
        self.parts, self.client, self.every = parts, client, every
        self.samples: list[dict[str, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            sample = {name: float(rss(proc)) for name, proc in self.parts.items()}
            sample["redis used_memory"] = float(self.client.info("memory")["used_memory"])
            sample["t"] = time.monotonic()
            self.samples.append(sample)
            self.halt.wait(self.every)

    def growth(self) -> dict[str, tuple[float, float, float]]:
        """Per part: mean MB over the first fifth, over the last fifth, growth in %."""
        n = max(1, len(self.samples) // 5)
        first, last = self.samples[:n], self.samples[-n:]
        out = {}
        for name in self.samples[0]:
            if name == "t":
                continue
            a = statistics.fmean(s[name] for s in first)
            b = statistics.fmean(s[name] for s in last)
            out[name] = (a / 2**20, b / 2**20, 100 * (b - a) / a if a else 0.0)
        return out


async def drive(url: str, cfid: str, rate: float, seconds: float, tally: Tally) -> None:
    """Send `rate` calls a second for `seconds`, each on a free keep-alive connection."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        idle.put_nowait(Connection(url))
    rng = random.Random(1)
    path = f"/task/{cfid}"

    async def call(a: int, b: int, conn: Connection) -> None:
        raw = request_bytes(url, path, json.dumps(envelope(f"[{a},{b}]")).encode())
        try:
            answer = await conn.send(raw)
            tally.latencies.append(answer.seconds)
            body = json.loads(answer.body)
            if answer.status == 200 and body.get("result") == f'{{"output": [{a + b}]}}':
                tally.right += 1
            else:
                tally.fail(f"[{a},{b}]: HTTP {answer.status} {answer.body[:200]!r}")
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            conn.close()
            tally.fail(f"[{a},{b}]: {exc!r}")
        finally:
            idle.put_nowait(conn)

    tasks = set()
    started = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        slot = started + i / rate
        delay = slot - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle.empty():
            tally.late += 1
        conn = await idle.get()
        tally.sent += 1
        task = asyncio.create_task(call(rng.randrange(10**6), rng.randrange(10**6), conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()


def run(seconds: float, rate: float, sample_every: float = 5.0,
        workdir: Path | None = None) -> dict:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="wasmq-soak-"))
    redis_proc, redis_url = start_redis(workdir / "redis")
    stack = None
    try:
        stack = start_stack(workdir / "stack", redis_url, concurrency=2,
                            WASMQ_RESULT_TTL=str(RESULT_TTL_S), **BENCH_ENV)
        api = Api(stack.url)
        cfid = api.deploy(modules.intsum(), name="soak")
        client = redis.Redis.from_url(redis_url)
        sampler = Sampler({"gateway": stack.gateway, "worker": stack.worker,
                           "redis-server": redis_proc}, client, sample_every)
        tally = Tally()
        sampler.start()
        started = time.monotonic()
        run_async(drive(stack.url, cfid, rate, seconds, tally))
        elapsed = time.monotonic() - started
        sampler.halt.set()
        sampler.join()
        lat = tally.latencies or [0.0]
        return {"seconds": round(elapsed, 1), "rate": rate, "sent": tally.sent,
                "right": tally.right, "wrong": tally.wrong, "late": tally.late,
                "p50_ms": ms(percentile(lat, 50)), "p99_ms": ms(percentile(lat, 99)),
                "max_ms": ms(max(lat)), "samples": len(sampler.samples),
                "memory_mb": {name: {"first": round(a, 1), "last": round(b, 1),
                                     "growth_pct": round(g, 1)}
                              for name, (a, b, g) in sampler.growth().items()}}
    finally:
        if stack is not None:
            stack.stop()
        redis_proc.stop()


def report(result: dict) -> str:
    lines = [f"soak: {result['seconds']:g} s at {result['rate']:g} calls/s",
             f"answered right / sent: {result['right']} / {result['sent']}"
             f"  ({result['late']} sent late: every connection busy)",
             f"latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
             f"max {result['max_ms']} ms",
             f"memory, first fifth -> last fifth ({result['samples']} samples):"]
    for name, m in result["memory_mb"].items():
        lines.append(f"  {name:<18} {m['first']:8.1f} MB -> {m['last']:8.1f} MB  "
                     f"{m['growth_pct']:+.1f} %")
    lines += [f"  wrong: {w}" for w in result["wrong"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="calls per second")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    result = run(args.minutes * 60, args.rate)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
