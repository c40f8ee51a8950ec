"""`python -m bench.ceiling`: what one Redis does for wasmq's command mix, so the
cluster's ceiling is a number.

Reads the command mix per call that `python -m bench` measured (bench/results.json,
`versus_peer.wasmq.redis_mix_per_call`: every command Redis ran, those inside
scripts included), then times each of those commands alone with `redis-benchmark`
on a Redis of its own (50 clients, no pipelining, as the gateway and workers send
them). The mix's cost per call is the sum of (commands per call / commands per
second); its inverse is the calls per second one Redis core carries, to set
against the calls per second measured. The Redis CPU per call measured in the
bench itself (INFO cpu) is the second estimate: it includes what the scripts
themselves cost (Lua, argument copying), which redis-benchmark's bare commands do not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.localstack import start_redis

RESULTS = Path(__file__).with_name("results.json")
# redis-benchmark commands standing for each command of the mix (__rand_int__: fresh keys)
COMMANDS = {
    "hset": ["HSET", "t:__rand_int__", "status", "running", "node", "h:1", "startedAt", "1.5"],
    "hget": ["HGET", "t:__rand_int__", "status"],
    "hmget": ["HMGET", "t:__rand_int__", "status", "createdAt"],
    "hgetall": ["HGETALL", "t:1"],
    "hdel": ["HDEL", "t:__rand_int__", "job"],
    "hincrby": ["HINCRBY", "counts", "f__rand_int__", "1"],
    "hincrbyfloat": ["HINCRBYFLOAT", "exec", "sum", "0.001"],
    "expire": ["EXPIRE", "t:__rand_int__", "86400"],
    "exists": ["EXISTS", "t:__rand_int__"],
    "zadd": ["ZADD", "pending", "1.5", "__rand_int__"],
    "zrem": ["ZREM", "pending", "__rand_int__"],
    "zcard": ["ZCARD", "pending"],
    "sadd": ["SADD", "queued", "__rand_int__"],
    "srem": ["SREM", "queued", "__rand_int__"],
    "scard": ["SCARD", "queued"],
    "get": ["GET", "k:__rand_int__"],
    "set": ["SET", "k:__rand_int__", "x"],
    "del": ["DEL", "k:__rand_int__"],
    "incrby": ["INCRBY", "rate", "1"],
    "lpush": ["LPUSH", "q", "message"],
    "rpush": ["RPUSH", "q", "message"],
    "lpop": ["LPOP", "q"],
    "llen": ["LLEN", "q"],
    "brpop": ["RPOP", "q"],  # a BRPOP that finds a message costs what an RPOP does
    "publish": ["PUBLISH", "wasmq:done", "wasmqt-0123456789abcdef0123456789abcdef"],
    "evalsha": ["EVAL", "return 1", "0"],  # a script's own cost, its commands aside
    "multi": ["PING"], "exec": ["PING"],
}


def per_second(port: int, argv: list[str], requests: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(requests),
                          "-r", "1000000", "-q", "--csv", *argv],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    line = [x for x in out.strip().splitlines() if not x.startswith('"test"')][-1]
    return float(line.split(",")[1].strip('"'))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--requests", type=int, default=100000)
    args = parser.parse_args()
    if not shutil.which("redis-benchmark"):
        raise SystemExit("redis-benchmark is not installed (apt-get install redis-tools)")
    results = json.loads(args.results.read_text())
    versus = results["versus_peer"]
    workdir = Path(tempfile.mkdtemp(prefix="wasmq-ceiling-"))
    proc, url = start_redis(workdir)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    out: dict = {}
    try:
        rates = {name: per_second(port, argv, args.requests) for name, argv in COMMANDS.items()}
        for stack in ("wasmq", "peer"):
            mix = versus[stack]["redis_mix_per_call"]
            unknown = sorted(set(mix) - set(rates))
            seconds = sum(n / rates[c] for c, n in mix.items() if c in rates)
            measured = versus[stack]["c64_tasks_per_s"]
            out[stack] = {
                "commands_per_call": round(sum(mix.values()), 2),
                "redis_benchmark_calls_per_s": round(1 / seconds),
                "redis_cpu_ms_per_call": versus[stack]["redis_cpu_ms_per_call"],
                "calls_per_s_per_redis_core": round(1000 / versus[stack]["redis_cpu_ms_per_call"]),
                "measured_c64_calls_per_s": measured, "not_timed": unknown}
        out["commands_per_s"] = {k: round(v) for k, v in rates.items()}
    finally:
        proc.stop()
    for stack in ("wasmq", "peer"):
        row = out[stack]
        print(f"{stack}: {row['commands_per_call']} commands per call; one Redis runs that mix "
              f"for {row['redis_benchmark_calls_per_s']} calls/s (redis-benchmark, bare "
              f"commands); Redis CPU {row['redis_cpu_ms_per_call']} ms per call in the bench "
              f"= {row['calls_per_s_per_redis_core']} calls/s per Redis core; measured here "
              f"{row['measured_c64_calls_per_s']} calls/s at 64 clients")
    results["redis_ceiling"] = out
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
