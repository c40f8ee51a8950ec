"""`python -m bench.latency`: where a lone call's time goes, hop by hop.

The performance issue asks for a sequential p50 of at most 0.6 of the hand-rolled
peer's. Batching cannot help a call that arrives alone, so this splits one
call's round trip by the timestamps its record carries (the gateway stamps
`createdAt` before sending it to Redis, the worker `startedAt` as it claims it
and `finishedAt` as it stores the outcome; one machine, one clock) and sets the
whole beside the bare-Celery floor (a no-op task sent with `apply_async` and
awaited with `get()`, no HTTP, no wasm) and the peer, in alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import redis

from bench import modules
from bench.__main__ import RESULTS
from bench.floor import Floor
from bench.load import BENCH_ENV, Client, request_bytes
from bench.peer import Peer
from bench.stats import loadavg, median_ms
from tests.localstack import start_redis, start_stack
from tests.support import Api, envelope
from wasmq.broker import keys

STAGES = ("client -> gateway stamped it", "stamped -> worker claimed it",
          "claimed -> outcome stored (the run)", "stored -> client has the reply")


def wasmq_stages(client: Client, raw: bytes, rc: redis.Redis, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for _ in range(n):
        sent = time.time()
        answer = client.loop.run_until_complete(client.conn.send(raw))
        received = time.time()
        record = rc.hmget(keys.task(json.loads(answer.body)["tid"]),
                          "createdAt", "startedAt", "finishedAt")
        created, started, finished = (float(x) for x in record)
        for stage, seconds in zip(STAGES, (created - sent, started - created,
                                           finished - started, received - finished),
                                  strict=True):
            out[stage].append(seconds)
        out["whole"].append(answer.seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_proc, redis_url = start_redis(work / "redis")
        stack = start_stack(work / "wasmq", redis_url, **BENCH_ENV)
        floor = Floor(redis_url, work, events=False)
        echo = modules.echo()
        peer = Peer(redis_url, echo, work / "peer")
        clients: dict[str, Client] = {}
        try:
            cfid = Api(stack.url).deploy(echo, name="bench-echo")
            body = json.dumps(envelope(modules.INPUT.decode())).encode()
            ours = request_bytes(stack.url, f"/task/{cfid}", body)
            theirs = request_bytes(peer.url, "/task/echo", body)
            rc = redis.Redis.from_url(redis_url)
            clients.update(wasmq=Client(stack.url), peer=Client(peer.url))
            clients["wasmq"].calls(ours, 50)
            clients["peer"].calls(theirs, 50)
            stages: dict[str, list[float]] = defaultdict(list)
            whole: dict[str, list[float]] = defaultdict(list)
            for _ in range(args.rounds):
                for stage, values in wasmq_stages(clients["wasmq"], ours, rc,
                                                  args.calls).items():
                    stages[stage] += values
                whole["peer"] += clients["peer"].calls(theirs, args.calls)
                whole["floor"] += floor.sequential(args.calls)
            whole["wasmq"] = stages.pop("whole")
            print(f"a lone call, p50 of {args.rounds * args.calls} sequential calls each "
                  f"(load average {loadavg()})")
            for stage in STAGES:
                print(f"  wasmq {stage:<40} {median_ms(stages[stage]):7.3f} ms")
            peer_ms = median_ms(whole["peer"])
            for name in ("wasmq", "peer", "floor"):
                print(f"{name:<6} whole round trip {'':<30} {median_ms(whole[name]):7.3f} ms"
                      f"  = {median_ms(whole[name]) / peer_ms:.2f} of the peer's")
            figures = {"stages_p50_ms": {s: median_ms(stages[s]) for s in STAGES},
                       **{f"{n}_p50_ms": median_ms(whole[n]) for n in ("wasmq", "peer", "floor")},
                       "calls": args.rounds * args.calls, "load_average": loadavg()}
            results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            RESULTS.write_text(json.dumps({**results, "latency": figures}, indent=2) + "\n")
            print(f"written to {RESULTS} (latency)")
        finally:
            for c in clients.values():
                c.close()
            peer.stop()
            floor.stop()
            stack.stop()
            redis_proc.stop()


if __name__ == "__main__":
    main()
