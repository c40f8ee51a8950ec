"""`python -m bench.profile`: where the time goes under load, from py-spy.

Starts Redis, a gateway and a worker like the benchmark does, drives intsum
with 64 clients, and samples the gateway's and the worker's process trees
with py-spy (`pip install py-spy`; needs ptrace rights). Prints each tree's
functions by own time and by inclusive time, and keeps the collapsed stacks
(flamegraph input) under the printed directory.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench import modules
from bench.__main__ import call_bytes
from bench.load import BENCH_ENV, Client, closed_loop
from tests.localstack import start_redis, start_stack
from tests.support import Api


def record(pid: int, seconds: float, out: Path, gil: bool) -> subprocess.Popen:
    """`gil`: only samples of threads holding the GIL, i.e. Python's own CPU time;
    otherwise every thread not idle (which counts waits on Redis and locks)."""
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--subprocesses",
                             "--duration", str(int(seconds)), "--rate", "250", "--format", "raw",
                             "--output", str(out), "--nonblocking"] + (["--gil"] if gil else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summary(collapsed: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")")
                  for f in stack.split(";")[1:]]
        if not frames or "select" in frames[-1] or "wait" in frames[-1].split(" ")[0]:
            continue  # idle threads, not work
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"  busy samples: {total}", "  own time:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--max-batch", type=int, default=None,
                        help="WASMQ_MAX_BATCH for the stack (default: its own default)")
    parser.add_argument("--wall", action="store_true",
                        help="sample every busy thread, not only the one holding the GIL")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wasmq-profile-"))
    redis_proc, redis_url = start_redis(workdir / "redis")
    env = dict(BENCH_ENV)
    if args.max_batch is not None:
        env["WASMQ_MAX_BATCH"] = str(args.max_batch)
    stack = start_stack(workdir / "stack", redis_url, **env)
    try:
        api = Api(stack.url)
        cfid = api.deploy(modules.intsum())
        raw = call_bytes(stack.url, cfid, modules.INPUT.decode())
        warm = Client(stack.url)
        warm.calls(raw, 50)
        warm.close()
        spies = {name: (record(proc.pid, args.seconds, workdir / f"{name}.txt",
                               not args.wall),
                        workdir / f"{name}.txt")
                 for name, proc in (("gateway", stack.gateway), ("worker", stack.worker))}
        load = threading.Thread(target=closed_loop,
                                args=(stack.url, raw, args.clients, args.seconds + 1))
        load.start()
        for spy, _ in spies.values():
            spy.wait()
        load.join()
        for name, (_, out) in spies.items():
            print(f"{name} ({out}):")
            print(summary(out, args.top))
    finally:
        stack.stop()
        redis_proc.stop()


if __name__ == "__main__":
    main()
